"""The Node.js Socket.IO 4 baseline relay (bench/baselines/node-relay) as a child process.

``node`` must be on PATH (Debian: ``apt-get install nodejs npm``); its npm
dependencies are installed on first use (``npm ci``, from package-lock.json).
Without node, ``NodeRelay.available()`` says why and the benchmarks skip the
baseline instead of failing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from bench_latency import ServerProcess

RELAY_DIR = Path(__file__).resolve().parent / "baselines" / "node-relay"
T = TypeVar("T")


class NodeRelay(ServerProcess):
    """``node server.js PORT``, started, probed (``/v1/health``) and stopped like
    ``bench_latency.ServerProcess``."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__(log_dir)
        self.log_path = log_dir / "node-relay.log"
        self.command = ["node", str(RELAY_DIR / "server.js"), str(self.port)]

    @staticmethod
    def available() -> str | None:
        """``None`` if the relay can run, else why not (node missing, npm install failed)."""
        if shutil.which("node") is None:
            return "node is not installed (Debian: apt-get install nodejs npm); baseline skipped"
        if not (RELAY_DIR / "node_modules" / "socket.io").is_dir():
            npm = shutil.which("npm")
            if npm is None:
                return "npm is not installed; cannot install the baseline's socket.io"
            print(f"installing the baseline's npm dependencies in {RELAY_DIR} ...", flush=True)
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=RELAY_DIR,
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                return f"npm ci failed; baseline skipped:\n{done.stderr[-2000:]}"
        return None

    def version(self) -> str:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
        pkg = RELAY_DIR / "node_modules" / "socket.io" / "package.json"
        sio = json.loads(pkg.read_text())["version"] if pkg.exists() else "?"
        return f"node {node.stdout.strip()}, socket.io {sio}"


async def run_both(
    prefix: str,
    run_kind: Callable[[str, ServerProcess], Awaitable[T]],
    *,
    skip_node: bool,
    skip_bisik: bool,
) -> dict[str, T]:
    """``run_kind`` against the Node relay (unless skipped or node is missing), then
    against a Bisik server process on SQLite; results keyed ``node`` / ``bisik``."""
    results: dict[str, T] = {}
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        if not skip_node:
            why_not = NodeRelay.available()
            if why_not is not None:
                print(f"  [node] {why_not}")
            else:
                relay = NodeRelay(root)
                print(f"  [node] {relay.version()}: {' '.join(relay.command)}")
                results["node"] = await run_kind("node", relay)
        if not skip_bisik:
            server = ServerProcess(root / "server")
            print(f"  [bisik] {' '.join(server.command[1:4])} ... SQLite in {server.data_dir}")
            results["bisik"] = await run_kind("bisik", server)
    print()
    return results
