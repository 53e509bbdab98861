"""End-to-end latency and burst throughput between two local clients.

Run: ``.venv/bin/python bench/bench_latency.py [-n 300] [--burst 1000]``

The server runs in a SEPARATE process, as deployed (``python -m bisik.cli
server``: uvicorn with its lean options and uvloop, SQLite in a temp dir),
so its event loop does not share a CPU with the clients'. Alice and Bob are
two ``bisik.client.Client`` profiles (each its own SQLCipher database) in THIS
process, on one plain asyncio event loop, as an app hosting two accounts would.

Measured:

* ``-n`` sequential messages (the next is sent only after the previous one
  arrived and was acked): time from the ``alice.send_text`` call to
  (a) Bob's ``MessageReceived`` event from ``bob.subscribe()`` and
  (b) ``alice.wait_sent`` returning (the server stored the envelope);
* a burst of ``--burst`` messages: ``send_text`` back to back, then the time
  until Alice has every ack and until Bob has received every message;
* CPU seconds of the server process and of this (client) process per phase,
  from /proc/<pid>/stat.

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx

from _common import banner, percentile, proc_cpu_seconds, summary_line
from bisik.client import Client, Event, KdfParams, MessageReceived, MessageSent

FAST_KDF = KdfParams(time_cost=1, memory_cost_kib=8192, parallelism=1)
PASSWORD = "correct horse battery staple"
TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m bisik.cli server`` in a child process: the server as deployed
    (its uvicorn options included), SQLite in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.command = [
            *(sys.executable, "-m", "bisik.cli", "server"),
            *("--host", "127.0.0.1", "--port", str(self.port), "--data", str(self.data_dir)),
        ]

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.command, stdout=log, stderr=log)
        log.close()
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/v1/health")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        await self.stop()
        raise RuntimeError(f"server did not start; its log ends with:\n{tail}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.to_thread(self.proc.wait, 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)


class Cpu:
    """CPU seconds used by the server and by this process over one phase."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.server0 = proc_cpu_seconds(server_pid)
        self.client0 = proc_cpu_seconds()
        self.wall0 = time.perf_counter()

    def report(self, label: str, messages: int) -> str:
        wall = time.perf_counter() - self.wall0
        server = proc_cpu_seconds(self.server_pid) - self.server0
        client = proc_cpu_seconds() - self.client0
        return (
            f"    CPU during {label} ({wall:.2f} s wall): server {server:.2f} s "
            f"({server / wall:.0%} of a core, {server / messages * 1e3:.2f} ms/msg), "
            f"clients {client:.2f} s ({client / wall:.0%}, {client / messages * 1e3:.2f} ms/msg)"
        )


async def _stamp(awaitable: Awaitable[Any]) -> float:
    await awaitable
    return time.perf_counter()


async def _received(inbox: asyncio.Queue[Event], message_id: str) -> float:
    while True:
        event = await inbox.get()
        if isinstance(event, MessageReceived) and event.message.id == message_id:
            return time.perf_counter()


async def _exchange(
    sender: Client,
    receiver: Client,
    inbox: asyncio.Queue[Event] | None,
    n: int,
    target: str | None = None,
) -> None:
    """``n`` messages from sender to receiver (or to ``target``, e.g. a group of both);
    ``inbox`` is the receiver's, or ``None`` to subscribe only for these."""
    queue = receiver.subscribe() if inbox is None else inbox
    try:
        for i in range(n):
            message = await sender.send_text(target or receiver.username, f"warm-up {i}")
            async with asyncio.timeout(TIMEOUT_S):
                await _received(queue, message.id)
                await sender.wait_sent(message.id, timeout=TIMEOUT_S)
    finally:
        if inbox is None:
            # Left subscribed, the queue would keep every later event (and the
            # heap it holds would make each full collection longer).
            receiver.unsubscribe(queue)


def _line(label: str, ms: list[float]) -> str:
    return (
        f"    {label:<34} p50 {percentile(ms, 50):7.2f}  p90 {percentile(ms, 90):7.2f}  "
        f"p99 {percentile(ms, 99):7.2f}  max {max(ms):7.2f}  mean {sum(ms) / len(ms):7.2f} ms"
    )


async def sequential(
    alice: Client, bob: Client, bob_inbox: asyncio.Queue[Event], n: int, server_pid: int
) -> dict[str, float]:
    call_ms: list[float] = []
    recv_ms: list[float] = []
    ack_ms: list[float] = []
    text = "see you at the station at eight, bring the tickets please"
    cpu = Cpu(server_pid)
    for i in range(n):
        t0 = time.perf_counter()
        message = await alice.send_text("bob", f"{i:05d} {text}")
        t_call = time.perf_counter()
        async with asyncio.timeout(TIMEOUT_S):
            t_recv, t_ack = await asyncio.gather(
                _received(bob_inbox, message.id),
                _stamp(alice.wait_sent(message.id, timeout=TIMEOUT_S)),
            )
        call_ms.append((t_call - t0) * 1e3)
        recv_ms.append((t_recv - t0) * 1e3)
        ack_ms.append((t_ack - t0) * 1e3)
    cpu_line = cpu.report(f"{n} sequential messages", n)
    print(f"  Sequential: {n} messages alice -> bob, one at a time (ms from send_text call)")
    print(_line("send_text returns (local store)", call_ms))
    print(_line("bob's MessageReceived event", recv_ms))
    print(_line("alice's wait_sent (server ack)", ack_ms))
    print(cpu_line)
    print()
    return {
        "recv_p50": percentile(recv_ms, 50),
        "recv_p99": percentile(recv_ms, 99),
        "ack_p50": percentile(ack_ms, 50),
        "ack_p99": percentile(ack_ms, 99),
    }


async def burst(
    alice: Client, bob: Client, bob_inbox: asyncio.Queue[Event], count: int, server_pid: int
) -> dict[str, float]:
    alice_events = alice.subscribe()
    ids: list[str] = []
    received: list[str] = []
    acked: set[str] = set()
    t_acked = t_received = float("nan")

    cpu = Cpu(server_pid)
    t0 = time.perf_counter()
    for i in range(count):
        message = await alice.send_text("bob", f"burst {i:05d}")
        ids.append(message.id)
    t_queued = time.perf_counter()
    wanted = set(ids)

    async def all_acked() -> None:
        nonlocal t_acked
        while len(acked) < count:
            event = await alice_events.get()
            if isinstance(event, MessageSent) and event.message.id in wanted:
                acked.add(event.message.id)
        t_acked = time.perf_counter()

    async def all_received() -> None:
        nonlocal t_received
        while len(received) < count:
            event = await bob_inbox.get()
            if isinstance(event, MessageReceived) and event.message.id in wanted:
                received.append(event.message.id)
        t_received = time.perf_counter()

    timed_out = False
    try:
        async with asyncio.timeout(TIMEOUT_S * 2):
            await asyncio.gather(all_acked(), all_received())
    except TimeoutError:
        timed_out = True
    cpu_line = cpu.report(f"the {count}-message burst", max(len(received), 1))

    position = {mid: k for k, mid in enumerate(ids)}
    out_of_order = sum(1 for a, b in itertools.pairwise(received) if position[b] < position[a])
    print(f"  Burst: {count} messages alice -> bob, send_text back to back")
    if timed_out:
        print(
            f"    TIMED OUT after {TIMEOUT_S * 2:.0f} s: {len(acked)} acked, "
            f"{len(received)} received"
        )
    print(
        f"    all {count} send_text calls returned after  {(t_queued - t0) * 1e3:8.1f} ms "
        f"({(t_queued - t0) / count * 1e3:.2f} ms each)"
    )
    print(
        f"    all acked by the server (alice)    after  {(t_acked - t0) * 1e3:8.1f} ms "
        f"-> {count / (t_acked - t0):6.0f} msgs/s"
    )
    print(
        f"    all received by bob                after  {(t_received - t0) * 1e3:8.1f} ms "
        f"-> {count / (t_received - t0):6.0f} msgs/s"
    )
    print(f"    bob received them out of send order: {out_of_order} adjacent inversions")
    print(cpu_line)
    print()
    return {
        "burst_recv_rate": count / (t_received - t0),
        "burst_ack_rate": count / (t_acked - t0),
    }


async def run(n: int, burst_count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bisik-bench-") as tmp:
        root = Path(tmp)
        server = ServerProcess(root / "server")
        await server.start()
        clients: list[Client] = []
        try:
            print(f"server: separate process pid {server.pid}: {' '.join(server.command[1:])}")
            print(
                f"        SQLite in {server.data_dir}; clients: this process (pid {os.getpid()}), "
                "one asyncio loop, two SQLCipher profiles"
            )
            print()
            for name in ("alice", "bob"):
                t0 = time.perf_counter()
                client = await Client.create_account(
                    root / "homes" / name,
                    server_url=server.url,
                    username=name,
                    password=PASSWORD,
                    kdf=FAST_KDF,
                )
                clients.append(client)
                t1 = time.perf_counter()
                await client.connect()
                await asyncio.wait_for(client.synced.wait(), TIMEOUT_S)
                t2 = time.perf_counter()
                print(
                    f"  {name}: create_account {(t1 - t0) * 1e3:.0f} ms, "
                    f"connect + first sync {(t2 - t1) * 1e3:.0f} ms"
                )
            alice, bob = clients
            bob_inbox = bob.subscribe()
            alice_inbox = alice.subscribe()
            # Warm-up both ways: the Olm session gets established (alice claims a key,
            # bob's reply ends alice's pre-key messages) and device lists are cached.
            t0 = time.perf_counter()
            await _exchange(alice, bob, bob_inbox, 5)
            await _exchange(bob, alice, alice_inbox, 5)
            print(f"  warm-up (5 messages each way): {(time.perf_counter() - t0) * 1e3:.0f} ms")
            print()

            seq = await sequential(alice, bob, bob_inbox, n, server.pid)
            bst = await burst(alice, bob, bob_inbox, burst_count, server.pid)
        finally:
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.close()
            await server.stop()

    summary_line("e2e latency p50 send->bob received", f"{seq['recv_p50']:.2f} ms")
    summary_line("e2e latency p99 send->bob received", f"{seq['recv_p99']:.2f} ms")
    summary_line("e2e latency p50 send->server ack", f"{seq['ack_p50']:.2f} ms")
    summary_line("e2e latency p99 send->server ack", f"{seq['ack_p99']:.2f} ms")
    summary_line(
        f"burst {burst_count} msgs: received by bob", f"{bst['burst_recv_rate']:.0f} msgs/s"
    )
    summary_line(f"burst {burst_count} msgs: acked to alice", f"{bst['burst_ack_rate']:.0f} msgs/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="sequential messages")
    parser.add_argument("--burst", type=int, default=1000, help="messages in the burst")
    args = parser.parse_args()
    banner("bench_latency: send -> receive between two local clients")
    asyncio.run(run(args.n, args.burst))


if __name__ == "__main__":
    main()
