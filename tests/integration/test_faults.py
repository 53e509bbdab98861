"""Faults: a SIGKILLed server, dropped and frozen connections, a Redis restart.

Real ``bisik server`` processes (SQLite in a temp data dir, the port kept across
restarts) and real ``Client`` devices that send continuously. Whatever happens,
every message ends up shown exactly once on every device it was addressed to, in
the order its sender wrote it, and nothing is refused: what the server
acknowledged survives the kill, what it did not is resent by the outbox.

``BISIK_FAULT_KILLS`` sets the number of kills (default 20) and
``BISIK_FAULT_SEED`` replays a run; the seed of each run is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bisik.client import Client, MessageReceived, MessageSent
from bisik.server import free_port
from tests.conftest import FAST_KDF, PASSWORD
from tests.integration._server_process import ServerProcess
from tests.integration.test_devices import link

KILLS = int(os.environ.get("BISIK_FAULT_KILLS", "20"))


def _seed() -> int:
    seed = int(os.environ.get("BISIK_FAULT_SEED", secrets.randbelow(2**32)))
    print(f"fault seed: BISIK_FAULT_SEED={seed}")
    return seed


@dataclass
class Device:
    """One client device and everything the test saw it do."""

    client: Client
    inbox: asyncio.Queue[object]
    sent: list[tuple[str, str]] = field(default_factory=list)  # (peer, message id) in order
    received: list[MessageReceived] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)

    @property
    def key(self) -> tuple[str, str]:
        return (self.client.username, self.client.device_id)

    def drain(self) -> None:
        while not self.inbox.empty():
            event = self.inbox.get_nowait()
            if isinstance(event, MessageReceived):
                self.received.append(event)
            elif isinstance(event, MessageSent):
                self.acked.add(event.message.id)


def expected_for(devices: list[Device], receiver: Device) -> dict[tuple[str, str], list[str]]:
    """What ``receiver`` must get, per sending device, in that sender's order.

    A message to ``peer`` goes to each of the peer's devices and to the sender's
    own other devices.
    """
    expected: dict[tuple[str, str], list[str]] = defaultdict(list)
    me = receiver.client.username
    for sender in devices:
        if sender is receiver:
            continue
        for peer, message_id in sender.sent:
            if peer == me or sender.client.username == me:
                expected[sender.key].append(message_id)
    return expected


def check_delivery(devices: list[Device]) -> int:
    """Assert exactly-once, in-order delivery everywhere; return the number of deliveries."""
    total = 0
    for receiver in devices:
        receiver.drain()
        counts = Counter(e.message.id for e in receiver.received)
        twice = [m for m, n in counts.items() if n > 1]
        assert not twice, f"{receiver.key} was shown {len(twice)} messages twice"
        got: dict[tuple[str, str], list[str]] = defaultdict(list)
        for event in receiver.received:
            got[(event.message.sender, event.message.sender_device)].append(event.message.id)
        expected = expected_for(devices, receiver)
        for sender, ids in expected.items():
            assert got[sender] == ids, (
                f"{receiver.key} from {sender}: {len(got[sender])} shown, {len(ids)} sent; "
                f"missing {len(set(ids) - set(got[sender]))}, "
                f"in order: {[i for i in got[sender] if i in ids] == ids}"
            )
        assert set(got) <= set(expected), f"{receiver.key} got messages from nowhere"
        total += len(receiver.received)
    return total


def all_delivered(devices: list[Device]) -> bool:
    for receiver in devices:
        receiver.drain()
        ids = {e.message.id for e in receiver.received}
        for expected in expected_for(devices, receiver).values():
            if not ids.issuperset(expected):
                return False
    return True


async def wait_converged(devices: list[Device], timeout: float) -> None:
    """Every outbox empty and every addressed message shown, or ``TimeoutError``."""
    async with asyncio.timeout(timeout):
        while True:
            if not any(d.client.pending_count() for d in devices) and all_delivered(devices):
                return
            await asyncio.sleep(0.2)


async def keep_sending(
    device: Device, peers: list[str], rng: random.Random, stop: asyncio.Event, tag: str
) -> None:
    i = 0
    while not stop.is_set():
        peer = peers[i % len(peers)]
        message = await device.client.send_text(
            peer, f"{tag} {device.client.username} to {peer} #{i}"
        )
        device.sent.append((peer, message.id))
        i += 1
        await asyncio.sleep(rng.uniform(0.05, 0.25))


@contextlib.asynccontextmanager
async def chatting(
    devices: list[Device], rng: random.Random, tag: str
) -> AsyncIterator[asyncio.Event]:
    """Every device sends to every other user, in turn, until the block ends."""
    stop = asyncio.Event()
    users = sorted({d.client.username for d in devices})
    tasks = [
        asyncio.create_task(
            keep_sending(d, [u for u in users if u != d.client.username], rng, stop, tag)
        )
        for d in devices
    ]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def new_device(home: Path, url: str, username: str) -> Device:
    client = await Client.create_account(
        home / username, server_url=url, username=username, password=PASSWORD, kdf=FAST_KDF
    )
    inbox = client.subscribe()
    await client.connect(retry=True)
    await asyncio.wait_for(client.synced.wait(), 10)
    return Device(client, inbox)


async def test_sigkilled_server_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(_seed())
    server = ServerProcess(tmp_path / "server", free_port())
    await server.start()
    devices: list[Device] = []
    try:
        for name in ("alice", "bob", "carol"):
            devices.append(await new_device(tmp_path, server.url, name))
        second = await link(devices[0].client, tmp_path / "alice2")
        devices.append(Device(second, second.subscribe()))
        await second.connect(retry=True)
        await asyncio.wait_for(second.synced.wait(), 10)

        unacked_at_kill = 0
        async with chatting(devices, rng, "canary-kill"):
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.05, 2.0))
                unacked_at_kill += sum(d.client.pending_count() for d in devices)
                server.kill()
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                await server.start()
        for device in devices:
            device.drain()
        acked_during_kills = sum(len(d.acked) for d in devices)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await wait_converged(devices, timeout=120)
        converged_s = loop.time() - started

        sent = sum(len(d.sent) for d in devices)
        delivered = check_delivery(devices)
        for device in devices:
            device.drain()
            states = Counter(
                m.state
                for peer in {p for p, _ in device.sent}
                for m in device.client.history(peer, limit=100_000)
                if m.sender_device == device.client.device_id
            )
            # Acknowledged by the server (sent), and maybe by the peer (delivered, read).
            assert set(states) <= {"sent", "delivered", "read"}, (device.key, states)
            assert states.total() == len(device.sent), (device.key, states)
            # Everything the server acknowledged, even before a kill, was delivered.
            assert device.acked == {m for _, m in device.sent}
        print(
            f"kills={server.kills} sent={sent} delivered={delivered} "
            f"acked_before_end={acked_during_kills} queued_at_kills={unacked_at_kill} "
            f"converged_after={converged_s:.1f}s"
        )
        assert server.kills >= KILLS
        assert acked_during_kills > 0, "no message got through between kills"
    finally:
        for device in devices:
            await device.client.close()
        server.stop()


pytestmark = pytest.mark.timeout(300)
