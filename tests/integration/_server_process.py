"""``bisik server`` as a real subprocess that a test may SIGKILL and start again.

The port stays the same across restarts, so connected clients find the new
process by themselves; the data directory (SQLite) and the log file carry over.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import httpx

BISIK = [sys.executable, "-m", "bisik.cli"]


class ServerProcess:
    """One ``bisik server`` process at a time on a fixed port.

    Args:
        data: the server's data directory; its ``server.log`` collects the output
            of every process started here (the canary check reads it).
        port: a loopback port, kept for every restart.
        extra: more ``bisik server`` flags (``--database-url``, ``--redis-url``...).
    """

    def __init__(
        self, data: Path, port: int, extra: list[str] | None = None, max_file_bytes: int = 0
    ) -> None:
        self.data = data
        self.max_file_bytes = max_file_bytes
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        data.mkdir(parents=True, exist_ok=True)

    @property
    def log(self) -> Path:
        return self.data / "server.log"

    async def start(self, timeout: float = 30.0) -> None:
        """Start the process and return once it answers its health check."""
        assert self.proc is None, "already running"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*BISIK, "server", "--data", str(self.data), "--port", str(self.port), *self.extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=self._limit_files if self.max_file_bytes else None,
            )
        self.starts += 1
        async with httpx.AsyncClient(timeout=2) as http, asyncio.timeout(timeout):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
                # Our process is past its migrations (it logs this right before it
                # binds) and something answers on the port...
                ready = self.log.read_text(errors="replace").count("database ready")
                try:
                    healthy = (await http.get(f"{self.url}/v1/health")).status_code == 200
                except httpx.TransportError:
                    healthy = False
                if ready >= self.starts and healthy:
                    # ... and it is ours: a process that lost the port exits at once.
                    await asyncio.sleep(0.2)
                    if self.proc.poll() is None:
                        return
                await asyncio.sleep(0.05)

    def _limit_files(self) -> None:
        # No file of the server may grow past this: writes fail as on a full disk
        # (Python ignores SIGXFSZ, so the write returns EFBIG, SQLite "disk is full").
        # Only the soft limit: lifting it again (free_disk) needs no privilege.
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_file_bytes, resource.RLIM_INFINITY))

    def free_disk(self) -> None:
        """Lift the file-size limit of the running process: the space returns."""
        assert self.proc is not None
        unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, unlimited)

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, nothing is flushed."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None
            self.kills += 1

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
