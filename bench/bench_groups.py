"""Group fan-out: one Megolm message to every member of a large group.

Run: ``.venv/bin/python bench/bench_groups.py [--members 200] [-n 30]``

The server runs in its own process (SQLite, as in bench_latency.py); every
member is a real ``bisik.client.Client`` with its own SQLCipher profile, one
device each, all in THIS process on one asyncio loop. Measured:

* the first message: the sender shares its Megolm session key with every
  member device over Olm (one-time keys claimed, pre-key messages), then sends;
* ``-n`` sequential messages (the next after every member has the previous
  one): time from ``send_text`` to each member's ``MessageReceived`` (per
  recipient) and to the last member's (the whole fan-out), the server's ack,
  and the server's CPU per fan-out;
* a rotation: a member is removed and the next message goes out under a new
  session shared with everyone left.

Every recipient decrypts and stores every message in this one process, so the
"all delivered" figure includes ``members - 1`` decryptions done one after the
other by the same CPU; the per-recipient figures show how they spread. The
member profiles live on tmpfs (``--homes``, default /dev/shm): each SQLCipher
commit fsyncs, and 199 fsyncs in a row on one disk would measure this one
process's disk queue, not a group where every member has their own device.
The server's database stays on disk. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path

from _common import banner, fs_type, percentile, summary_line
from bench_latency import FAST_KDF, PASSWORD, TIMEOUT_S, Cpu, ServerProcess
from bisik.client import Client, MessageReceived


class Arrivals:
    """When each member's ``MessageReceived`` came, per message id."""

    def __init__(self, clients: list[Client]) -> None:
        self.times: dict[str, list[float]] = {}
        self.done: dict[str, asyncio.Event] = {}
        self.expected = 0
        self._tasks = [asyncio.create_task(self._watch(c)) for c in clients]

    async def _watch(self, client: Client) -> None:
        inbox = client.subscribe()
        while True:
            event = await inbox.get()
            if isinstance(event, MessageReceived):
                now = time.perf_counter()
                times = self.times.setdefault(event.message.id, [])
                times.append(now)
                if len(times) >= self.expected:
                    self.done.setdefault(event.message.id, asyncio.Event()).set()

    async def wait(self, message_id: str, expected: int) -> list[float]:
        self.expected = expected
        event = self.done.setdefault(message_id, asyncio.Event())
        if len(self.times.get(message_id, [])) >= expected:
            event.set()
        await asyncio.wait_for(event.wait(), TIMEOUT_S * 4)
        return self.times[message_id]

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()


async def one_message(
    sender: Client, arrivals: Arrivals, target: str, text: str, recipients: int
) -> tuple[float, float, list[float]]:
    """(ack ms, last-arrival ms, per-recipient ms) for one group message."""
    t0 = time.perf_counter()
    message = await sender.send_text(target, text)

    async def ack() -> float:
        await sender.wait_sent(message.id, TIMEOUT_S)
        return (time.perf_counter() - t0) * 1e3

    acked = asyncio.create_task(ack())
    times = await arrivals.wait(message.id, recipients)
    per = [(t - t0) * 1e3 for t in times]
    return await acked, max(per), per


async def run(members: int, n: int, homes_dir: str | None) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="bisik-bench-groups-") as tmp,
        tempfile.TemporaryDirectory(prefix="bisik-bench-homes-", dir=homes_dir) as homes,
    ):
        root = Path(tmp)
        server = ServerProcess(root / "server")
        await server.start()
        clients: list[Client] = []
        arrivals: Arrivals | None = None
        try:
            print(f"server: separate process pid {server.pid}, SQLite in {server.data_dir}")
            print(f"clients: {members} profiles in this process (pid {os.getpid()}), one loop,")
            print(f"         homes in {homes} on {fs_type(Path(homes))}")
            t0 = time.perf_counter()

            async def make(i: int) -> Client:
                client = await Client.create_account(
                    Path(homes) / f"m{i:04d}",
                    server_url=server.url,
                    username=f"m{i:04d}",
                    password=PASSWORD,
                    kdf=FAST_KDF,
                )
                await client.connect()
                await asyncio.wait_for(client.synced.wait(), TIMEOUT_S)
                return client

            for start in range(0, members, 20):
                clients += await asyncio.gather(
                    *(make(i) for i in range(start, min(start + 20, members)))
                )
            print(f"  {members} accounts created and connected in {time.perf_counter() - t0:.1f} s")
            sender, others = clients[0], clients[1:]
            arrivals = Arrivals(others)

            t0 = time.perf_counter()
            group = await sender.create_group("bench", [c.username for c in others])
            target = f"#{group.group_id}"
            print(f"  group of {members} created in {(time.perf_counter() - t0) * 1e3:.0f} ms")
            _, first_all, _ = await one_message(sender, arrivals, target, "hello all", len(others))
            print(
                f"  first message (key shared to {len(others)} devices over Olm, then sent): "
                f"all delivered in {first_all:.0f} ms"
            )

            cpu = Cpu(server.pid)
            alls: list[float] = []
            per: list[float] = []
            acks: list[float] = []
            for i in range(n):
                acked, last, spread = await one_message(
                    sender, arrivals, target, f"message {i}", len(others)
                )
                acks.append(acked)
                alls.append(last)
                per += spread
            cpu_line = cpu.report(f"{n} fan-outs", n)
            print()
            print(f"  {n} sequential messages to {len(others)} recipients each:")
            print(
                f"    per recipient:  p50 {percentile(per, 50):.1f} ms, "
                f"p99 {percentile(per, 99):.1f} ms, max {max(per):.1f} ms"
            )
            print(
                f"    all delivered:  p50 {percentile(alls, 50):.1f} ms, "
                f"p99 {percentile(alls, 99):.1f} ms"
            )
            print(
                f"    server ack:     p50 {percentile(acks, 50):.1f} ms, "
                f"p99 {percentile(acks, 99):.1f} ms"
            )
            print(cpu_line.replace("ms/msg", "ms/fan-out"))

            gone = others[-1]
            await sender.remove_member(target, gone.username)
            _, rotated, _ = await one_message(
                sender, arrivals, target, "after a removal", len(others) - 1
            )
            print(
                f"  rotation: first message after removing a member (new session shared "
                f"with {len(others) - 1} devices): all delivered in {rotated:.0f} ms"
            )
            waited = sum(c.group_stats["waiting"] for c in others)
            print(f"  messages that waited for their key: {waited}")
        finally:
            if arrivals is not None:
                arrivals.close()
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.close()
            await server.stop()

    summary_line(f"group of {members}: per-recipient p50", f"{percentile(per, 50):.1f} ms")
    summary_line(f"group of {members}: per-recipient p99", f"{percentile(per, 99):.1f} ms")
    summary_line(f"group of {members}: all delivered p50", f"{percentile(alls, 50):.1f} ms")
    summary_line(f"group of {members}: all delivered p99", f"{percentile(alls, 99):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("-n", type=int, default=30, help="sequential messages")
    parser.add_argument(
        "--homes",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where the member profiles live (default /dev/shm: see below)",
    )
    args = parser.parse_args()
    banner("bench_groups: one message to every member of a group")
    asyncio.run(run(args.members, args.n, args.homes))


if __name__ == "__main__":
    main()
