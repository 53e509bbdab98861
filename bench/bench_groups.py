"""Group fan-out: one Megolm message to every member of a large group.

Run: ``.venv/bin/python bench/bench_groups.py [--members 200] [-n 30] [--rate 10]
[--paced 100] [--real 10]``

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
  session shared with everyone left;
* the issue-9 scenario, ``--paced`` messages offered at ``--rate`` per second
  (open loop: latency counts from each message's scheduled time) with every
  member's device on its own, as in a real group: all but ``--real`` members
  hand their device's access token to a bare socket in a separate process
  (``_light_members.py``) that notes when each envelope reaches the device and
  acks it, as the SDK does; the ``--real`` clients left (spread over the group)
  decrypt and store every message, giving send -> decrypted. Server CPU per
  fan-out, and the receivers' process's CPU, are printed.

In the sequential part every recipient decrypts and stores every message in
this one process, so its "all delivered" figure includes ``members - 1``
decryptions done one after the other by the same CPU (~0.7 ms each); the
per-recipient figures show how they spread. The
member profiles live on tmpfs (``--homes``, default /dev/shm): each SQLCipher
commit fsyncs, and 199 fsyncs in a row on one disk would measure this one
process's disk queue, not a group where every member has their own device.
The server's database stays on disk. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    banner,
    cpu_ticks,
    fs_type,
    percentile,
    proc_cpu_seconds,
    steal_since,
    summary_line,
)
from bench_latency import FAST_KDF, PASSWORD, TIMEOUT_S, Cpu, ServerProcess
from bisik._heap import settle_heap
from bisik.client import Client, MessageReceived, MessageWaiting


class Arrivals:
    """When each member's ``MessageReceived`` came, per message id."""

    def __init__(self, clients: list[Client]) -> None:
        self.times: dict[str, list[float]] = {}
        self.done: dict[str, asyncio.Event] = {}
        self.expected = 0
        self.waited = 0  # MessageWaiting: a message that came before its key
        self._tasks = [asyncio.create_task(self._watch(c)) for c in clients]

    async def _watch(self, client: Client) -> None:
        inbox = client.subscribe()
        while True:
            event = await inbox.get()
            if isinstance(event, MessageWaiting):
                self.waited += 1
            if isinstance(event, MessageReceived):
                now = time.monotonic()
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
    t0 = time.monotonic()
    message = await sender.send_text(target, text)

    async def ack() -> float:
        await sender.wait_sent(message.id, TIMEOUT_S)
        return (time.monotonic() - t0) * 1e3

    acked = asyncio.create_task(ack())
    times = await arrivals.wait(message.id, recipients)
    per = [(t - t0) * 1e3 for t in times]
    return await acked, max(per), per


async def paced_phase(
    server: ServerProcess,
    sender: Client,
    others: list[Client],
    target: str,
    args: argparse.Namespace,
) -> dict[str, list[float]]:
    """``args.paced`` messages at ``args.rate``/s, every member's device on its own
    (see the module docstring). Returns the latencies in ms: at the device's
    socket, and decrypted by the real clients."""
    step = max(1, len(others) // max(1, args.real))
    real = others[::step][: args.real]
    light = [c for c in others if all(c is not r for r in real)]
    # The device's own access token, as its transport holds it (the one place
    # a benchmark reaches into the SDK): the bare socket is that device.
    tokens = [await c.transport.token() for c in light]
    for client in light:
        await client.close()
    # This process held 500 clients from the set-up; a sender's device holds
    # one. A full collection walked all of them (0.3-1 s, stalling the sender):
    # what is left is frozen out of collections, as `bisik chat` does once set up.
    settle_heap()
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("_light_members.py")),
        server.url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=1 << 28,  # the report is one JSON line of every arrival
    )
    assert worker.stdin is not None and worker.stdout is not None
    arrivals = Arrivals(real)
    try:
        worker.stdin.write(json.dumps(tokens).encode() + b"\n")
        await worker.stdin.drain()
        ready = await asyncio.wait_for(worker.stdout.readline(), TIMEOUT_S * 4)
        if not ready.startswith(b"ready"):
            raise RuntimeError(f"light members did not start: {ready!r}")
        await asyncio.sleep(1.0)  # sign-in writes and presence settle
        arrivals.expected = len(real)
        server0, worker0, self0, ticks0 = (
            proc_cpu_seconds(server.pid),
            proc_cpu_seconds(worker.pid),
            proc_cpu_seconds(),
            cpu_ticks(),
        )
        start = time.monotonic() + 0.1
        scheduled: dict[str, float] = {}
        stored: list[asyncio.Task[tuple[float, int]]] = []

        async def server_ack(message_id: str, at: float) -> tuple[float, int]:
            """ms until the sender has the server's ack, and the message's seq."""
            sent = await sender.wait_sent(message_id, TIMEOUT_S)
            assert sent.server_seq is not None
            return (time.monotonic() - at) * 1e3, sent.server_seq

        for i in range(args.paced):
            at = start + i / args.rate
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            message_id = (await sender.send_text(target, f"paced {i}")).id
            scheduled[message_id] = at
            stored.append(asyncio.create_task(server_ack(message_id, at)))
        decrypted: list[float] = []
        for message_id, at in scheduled.items():
            decrypted += [(t - at) * 1e3 for t in await arrivals.wait(message_id, len(real))]
        wall = time.monotonic() - start
        acks = [await task for task in stored]
        acked = [ms for ms, _ in acks]
        # Envelopes carry the message's seq: it maps an arrival to its schedule.
        at_seq = {seq: at for (_, seq), at in zip(acks, scheduled.values(), strict=True)}
        server_cpu = proc_cpu_seconds(server.pid) - server0
        worker_cpu = proc_cpu_seconds(worker.pid) - worker0
        self_cpu = proc_cpu_seconds() - self0
        steal = steal_since(ticks0)
        await asyncio.sleep(0.5)  # the last envelopes reach the slowest sockets
        worker.stdin.write(b"report\n")
        await worker.stdin.drain()
        report = json.loads(await asyncio.wait_for(worker.stdout.readline(), TIMEOUT_S))
    finally:
        arrivals.close()
        with contextlib.suppress(ProcessLookupError):
            worker.kill()
        await worker.wait()
    at_device = [
        (t - at_seq[int(seq)]) * 1e3
        for seq, times in report["arrivals"].items()
        if int(seq) in at_seq
        for t in times
    ]
    missing = len(at_seq) * len(light) - len(at_device)
    fanouts = len(scheduled)
    print()
    print(
        f"  {fanouts} messages offered at {args.rate:g}/s to {len(others)} devices, each on its "
        f"own: {len(light)} bare sockets in pid {worker.pid}, {len(real)} real clients here"
    )
    print(
        f"    at the device:  p50 {percentile(at_device, 50):.1f} ms, "
        f"p99 {percentile(at_device, 99):.1f} ms, max {max(at_device):.1f} ms "
        f"({len(at_device)} deliveries, {missing} missing)"
    )
    print(
        f"    decrypted:      p50 {percentile(decrypted, 50):.1f} ms, "
        f"p99 {percentile(decrypted, 99):.1f} ms (the {len(real)} real clients)"
    )
    print(
        f"    server ack:     p50 {percentile(acked, 50):.1f} ms, "
        f"p99 {percentile(acked, 99):.1f} ms (stored: send_text -> the sender has the ack)"
    )
    print(
        f"    CPU over {wall:.1f} s: server {server_cpu:.2f} s ({server_cpu / wall:.0%} of a core, "
        f"{server_cpu / fanouts * 1e3:.1f} ms/fan-out), bare sockets {worker_cpu:.2f} s "
        f"({worker_cpu / wall:.0%}), sender + real clients {self_cpu:.2f} s "
        f"({self_cpu / wall:.0%}); CPU steal {steal:.0%}"
    )
    return {
        "at_device": at_device,
        "decrypted": decrypted,
        "server_ms": [server_cpu / fanouts * 1e3],
    }


async def run(args: argparse.Namespace) -> None:
    members, n, homes_dir = args.members, args.n, args.homes
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
            t0 = time.monotonic()

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
            print(f"  {members} accounts created and connected in {time.monotonic() - t0:.1f} s")
            sender, others = clients[0], clients[1:]
            arrivals = Arrivals(others)

            t0 = time.monotonic()
            group = await sender.create_group("bench", [c.username for c in others])
            target = f"#{group.group_id}"
            print(f"  group of {members} created in {(time.monotonic() - t0) * 1e3:.0f} ms")
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
            print(
                f"  {n} sequential messages to {len(others)} recipients each, all in this process:"
            )
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

            gone = others.pop()
            await sender.remove_member(target, gone.username)
            _, rotated, _ = await one_message(
                sender, arrivals, target, "after a removal", len(others)
            )
            print(
                f"  rotation: first message after removing a member (new session shared "
                f"with {len(others)} devices): all delivered in {rotated:.0f} ms"
            )
            print(f"  messages that waited for their key: {arrivals.waited}")

            arrivals.close()
            arrivals = None
            paced = await paced_phase(server, sender, others, target, args)
        finally:
            if arrivals is not None:
                arrivals.close()
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.close()
            await server.stop()

    rate = f"{args.rate:g}/s"
    for pct in (50, 99):
        summary_line(
            f"group of {members} at {rate}: at the device p{pct}",
            f"{percentile(paced['at_device'], pct):.1f} ms",
        )
    for pct in (50, 99):
        summary_line(
            f"group of {members} at {rate}: decrypted p{pct} ({args.real} real)",
            f"{percentile(paced['decrypted'], pct):.1f} ms",
        )
    summary_line(
        f"group of {members} at {rate}: server CPU per fan-out", f"{paced['server_ms'][0]:.1f} ms"
    )
    for pct in (50, 99):
        summary_line(
            f"group of {members}, one process, sequential: per-recipient p{pct}",
            f"{percentile(per, pct):.1f} ms",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("-n", type=int, default=30, help="sequential messages")
    parser.add_argument("--paced", type=int, default=100, help="messages at --rate")
    parser.add_argument("--rate", type=float, default=10.0, help="messages/s offered")
    parser.add_argument("--real", type=int, default=10, help="members kept as real clients")
    parser.add_argument(
        "--homes",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where the member profiles live (default /dev/shm: see below)",
    )
    args = parser.parse_args()
    # Paced: the sender and the member removed in the rotation take no part.
    if not 1 <= args.real <= args.members - 3:
        parser.error("--real: at least 1, and at least one member left for the bare sockets")
    banner("bench_groups: one message to every member of a group")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
