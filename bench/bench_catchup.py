"""Catch-up: a device that was offline for ``-n`` messages comes back online.

Run: ``.venv/bin/python bench/bench_catchup.py [-n 10000] [--senders 4]``

Real ``bisik.client.Client`` profiles against a server process on SQLite (as in
bench_latency.py). Bob's device exchanges a few messages with each sender (the
Olm sessions exist, as in a running conversation), then closes. ``--senders``
accounts send ``-n`` messages to Bob between them, concurrently, until the
server has acked every one (the fill rate is printed too: it is the server's
durable-store throughput). Bob's profile (SQLCipher on disk, like a real device)
is then opened again and connected; measured: the time from ``connect()`` to the
last ``MessageReceived`` (every message decrypted and stored), to ``synced``,
and the CPU of the server and of Bob's process (this one). The senders are
offline by then, so only Bob's work is in the CPU figures. No baseline: the Node
relay stores nothing and so has nothing to catch up. Figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from _common import banner, fs_type, summary_line
from bench_latency import FAST_KDF, PASSWORD, TIMEOUT_S, Cpu, ServerProcess, _exchange
from bisik.client import Client, MessageReceived, Synced


async def fill(senders: list[Client], target: str, n: int) -> float:
    """Send ``n`` messages to ``target`` round robin; the seconds until all are acked."""
    t0 = time.perf_counter()
    ids: list[tuple[Client, str]] = []
    for i in range(n):
        sender = senders[i % len(senders)]
        message = await sender.send_text(
            target, f"{i:06d} catch-up message, about as long as a chat line"
        )
        ids.append((sender, message.id))
    for sender, message_id in ids:
        await sender.wait_sent(message_id, timeout=TIMEOUT_S * 20)
    return time.perf_counter() - t0


async def run(n: int, sender_count: int, homes: Path, bob_dir: Path | None, group: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bisik-bench-catchup-") as tmp:
        root = Path(tmp)
        server = ServerProcess(root / "server")
        await server.start()
        clients: list[Client] = []
        try:
            with tempfile.TemporaryDirectory(prefix="bisik-catchup-", dir=homes) as shm:

                async def make(home: Path, name: str) -> Client:
                    client = await Client.create_account(
                        home, server_url=server.url, username=name, password=PASSWORD, kdf=FAST_KDF
                    )
                    clients.append(client)
                    await client.connect()
                    await asyncio.wait_for(client.synced.wait(), TIMEOUT_S)
                    return client

                bob_home = (bob_dir or root) / f"bob-{time.time_ns()}"
                bob = await make(bob_home, "bob")
                senders = [
                    await make(Path(shm) / f"s{i}", f"sender{i}") for i in range(sender_count)
                ]
                bob_inbox = bob.subscribe()
                for sender in senders:
                    await _exchange(sender, bob, bob_inbox, 2)
                    await _exchange(bob, sender, None, 2)
                target = "bob"
                if group:
                    # Every sender's Megolm key reaches bob before he goes offline.
                    members = ["bob", *(s.username for s in senders)]
                    await senders[0].create_group("catch-up", members)
                    target = "#catch-up"
                    for sender in senders:
                        await _exchange(sender, bob, bob_inbox, 1, target)
                await bob.close()
                clients.remove(bob)
                print(
                    f"  bob's profile on {fs_type(bob_home)} ({bob_home}); "
                    f"{sender_count} senders on {fs_type(Path(shm))}"
                )

                fill_s = await fill(senders, target, n)
                print(
                    f"  fill: {n} messages from {sender_count} senders stored by the server in "
                    f"{fill_s:.1f} s ({n / fill_s:.0f} msgs/s) while bob was offline"
                )
                for sender in senders:
                    await sender.close()
                    clients.remove(sender)

                bob = await Client.open(bob_home, PASSWORD)
                clients.append(bob)
                inbox = bob.subscribe()
                received = 0
                t_synced = float("nan")
                cpu = Cpu(server.pid)
                t0 = time.perf_counter()
                await bob.connect()
                async with asyncio.timeout(TIMEOUT_S * 20):
                    while received < n:
                        event = await inbox.get()
                        if isinstance(event, MessageReceived):
                            received += 1
                        elif isinstance(event, Synced):
                            t_synced = time.perf_counter()
                t_all = time.perf_counter()
                cpu_line = cpu.report(f"the {n}-message catch-up", n)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(bob.synced.wait(), TIMEOUT_S)
                if t_synced != t_synced:  # Synced came after the last message
                    t_synced = time.perf_counter()
        finally:
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.close()
            await server.stop()

    took = t_all - t0
    print(
        f"  catch-up: all {n} decrypted and stored after {took:.2f} s "
        f"({n / took:.0f} msgs/s); synced after {t_synced - t0:.2f} s"
    )
    print(cpu_line)
    print()
    what = f"catch-up {n} {'group ' if group else ''}msgs"
    summary_line(f"{what}: all decrypted+stored", f"{took:.2f} s")
    summary_line(f"{what}: rate", f"{n / took:.0f} msgs/s")
    summary_line(f"{what}: fill, server stores (send+ack)", f"{n / fill_s:.0f} msgs/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000, help="messages missed while offline")
    parser.add_argument("--senders", type=int, default=4, help="accounts sending them")
    parser.add_argument("--homes", default="/dev/shm", help="where the senders' profiles live")
    parser.add_argument(
        "--bob-dir",
        type=Path,
        default=None,
        help="where bob's profile lives (default: the temp dir, on disk; /dev/shm to see "
        "what the per-message fsync costs)",
    )
    parser.add_argument(
        "--group", action="store_true", help="the backlog is in a group with every sender"
    )
    args = parser.parse_args()
    banner("bench_catchup: an offline device comes back to a backlog")
    asyncio.run(run(args.n, args.senders, Path(args.homes), args.bob_dir, args.group))


if __name__ == "__main__":
    main()
