"""Attachment throughput and memory: encrypt+upload, download+decrypt, beside the limits.

Run: ``.venv/bin/python bench/bench_attachments.py [--size-mb 1024]``

A file of ``--size-mb`` MiB (random blocks) is written to a temp dir, then:

* ``cp`` of the file (the disk/page-cache limit);
* a raw AES-256-GCM pass over it with ``cryptography``, 64 KiB per call, reading
  it in 1 MiB blocks (the cipher's limit in one Python thread);
* ``Client.send_file`` to oneself: read + encrypt (chunked AES-GCM) + SHA-256 +
  upload in 8 MiB parts over loopback HTTP to a server in its own process (SQLite,
  local-directory blob store, fsync per part);
* ``Client.download_attachment``: stream down + SHA-256 + decrypt + write + fsync,
  then the verified rename.

For each phase: MB/s (MiB of plaintext per second of wall time) and the peak
resident memory of this (client) process and of the server process during the
phase (VmHWM, reset before each phase through /proc/<pid>/clear_refs), and the CPU
seconds each used (``cp`` runs in a child: its CPU is not counted). Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from _common import banner, proc_cpu_seconds, proc_memory_mib, summary_line
from bench_latency import FAST_KDF, PASSWORD, ServerProcess
from bisik.client import Client

MiB = 1024 * 1024


def reset_peak(pid: int | None = None) -> None:
    """Reset VmHWM (peak RSS) of a process to its current RSS (Linux)."""
    target = "self" if pid is None else str(pid)
    with contextlib.suppress(OSError):
        Path(f"/proc/{target}/clear_refs").write_text("5")


def write_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(4 * MiB)
    with path.open("wb") as f:
        done = 0
        while done < size:
            piece = (done.to_bytes(8, "big") + block)[: min(4 * MiB, size - done)]
            f.write(piece)
            digest.update(piece)
            done += len(piece)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def raw_aes_gcm(path: Path) -> None:
    aead = AESGCM(os.urandom(32))
    nonce = 0
    with path.open("rb") as f:
        while block := f.read(MiB):
            view = memoryview(block)
            for start in range(0, len(block), 64 * 1024):
                aead.encrypt(nonce.to_bytes(12, "big"), view[start : start + 64 * 1024], b"")
                nonce += 1


class Phase:
    def __init__(self, name: str, size_mib: float, server_pid: int) -> None:
        self.name = name
        self.size_mib = size_mib
        self.server_pid = server_pid

    def __enter__(self) -> Phase:
        reset_peak()
        reset_peak(self.server_pid)
        self.t0 = time.perf_counter()
        self.cpu0 = proc_cpu_seconds(), proc_cpu_seconds(self.server_pid)
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        rate = self.size_mib / wall
        client_peak = proc_memory_mib()[1]
        server_peak = proc_memory_mib(self.server_pid)[1]
        client_cpu = proc_cpu_seconds() - self.cpu0[0]
        server_cpu = proc_cpu_seconds(self.server_pid) - self.cpu0[1]
        print(
            f"{self.name:<18} {wall:6.2f} s {rate:7.1f} MB/s  "
            f"peak RSS client {client_peak:4.0f} MiB, server {server_peak:4.0f} MiB  "
            f"CPU client {client_cpu:5.2f} s, server {server_cpu:5.2f} s"
        )
        summary_line(f"{self.name} MB/s", f"{rate:.0f}")
        summary_line(
            f"{self.name} peak RSS client/server MiB", f"{client_peak:.0f}/{server_peak:.0f}"
        )


async def run(size_mb: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bisik-bench-att-") as tmp_name:
        tmp = Path(tmp_name)
        size = size_mb * MiB
        src = tmp / "big.bin"
        print(f"writing a {size_mb} MiB file in {tmp} ...", flush=True)
        expected = write_file(src, size)
        server = ServerProcess(tmp / "server")
        await server.start()
        try:
            alice = await Client.create_account(
                tmp / "alice",
                server_url=server.url,
                username="alice",
                password=PASSWORD,
                kdf=FAST_KDF,
            )
            bob = await Client.create_account(
                tmp / "bob", server_url=server.url, username="bob", password=PASSWORD, kdf=FAST_KDF
            )
            await alice.connect()
            await asyncio.wait_for(alice.synced.wait(), 30)
            print(f"client RSS before the phases: {proc_memory_mib()[0]:.0f} MiB\n")

            with Phase("cp", size_mb, server.pid):
                subprocess.run(["cp", str(src), str(tmp / "copy.bin")], check=True)
            (tmp / "copy.bin").unlink()
            with Phase("raw AES-256-GCM", size_mb, server.pid):
                await asyncio.to_thread(raw_aes_gcm, src)
            with Phase("encrypt+upload", size_mb, server.pid):
                message = await alice.send_file("bob", src)
            await alice.wait_sent(message.id, timeout=60)
            out = tmp / "downloaded.bin"
            with Phase("download+decrypt", size_mb, server.pid):
                await alice.download_attachment(message.id, out)
            same = await asyncio.to_thread(sha256_file, out) == expected
            print(f"\ndownloaded file matches the original: {same}")
            await alice.close()
            await bob.close()
        finally:
            await server.stop()
            shutil.rmtree(tmp / "server", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="file size in MiB")
    args = parser.parse_args()
    banner("bench_attachments.py")
    asyncio.run(run(args.size_mb))


if __name__ == "__main__":
    main()
