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
import json
import os
import random
import secrets
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bisik.client import Client, MessageReceived, MessageSent, NotConnected
from bisik.server import ServerConfig, free_port
from tests.conftest import (
    FAST_KDF,
    PASSWORD,
    POSTGRES_URL,
    REDIS_URL,
    RunningServer,
    _postgres_database,
)
from tests.integration._server_process import ServerProcess
from tests.integration.test_devices import link

KILLS = int(os.environ.get("BISIK_FAULT_KILLS", "20"))
DROPS = int(os.environ.get("BISIK_FAULT_DROPS", "24"))

pytestmark = pytest.mark.timeout(300)


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
                f"in order: {[i for i in got[sender] if i in ids] == ids}; "
                f"positions shown: {[ids.index(i) if i in ids else None for i in got[sender]]}"
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
        await asyncio.sleep(rng.uniform(0.1, 0.4))


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
                await asyncio.sleep(rng.uniform(0.05, 1.2))
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


# -- connections cut from the client side --------------------------------------------


def sever(client: Client) -> bool:
    """Cut the client's TCP connection with no close frame, like a pulled cable."""
    ws = client.transport.sio.eio.ws
    transport = getattr(getattr(ws, "_conn", None), "transport", None)
    if transport is None or transport.is_closing():
        return False
    transport.abort()
    return True


def cut_at_random(
    device: Device, rng: random.Random, cuts: Counter[str], armed: asyncio.Event
) -> None:
    """Make ``device`` lose its connection at the worst moments, while ``armed``:

    right after a ``send`` left (the server may store it, the ack is lost), right
    before an ``ack`` would leave (shown here, still queued on the server), and as
    a pushed envelope arrives (before it is handled).
    """
    sio = device.client.transport.sio
    emit = sio.emit
    on_envelope = sio.handlers["/"]["envelope"]

    def roll(kind: str) -> None:
        if armed.is_set() and rng.random() < 0.15 and sever(device.client):
            cuts[kind] += 1

    async def emit_and_cut(event: str, *args: Any, **kwargs: Any) -> None:
        if event == "ack":
            roll("before ack")
        await emit(event, *args, **kwargs)
        if event == "send":
            roll("mid-send")

    async def envelope_and_cut(data: Any) -> None:
        await on_envelope(data)
        roll("mid-receive")

    sio.emit = emit_and_cut
    sio.handlers["/"]["envelope"] = envelope_and_cut


async def test_connections_cut_mid_send_and_mid_receive(
    server: RunningServer, tmp_path: Path
) -> None:
    rng = random.Random(_seed())
    devices = [await new_device(tmp_path, server.url, n) for n in ("alice", "bob", "carol")]
    cuts: Counter[str] = Counter()
    armed = asyncio.Event()
    try:
        for device in devices:
            cut_at_random(device, rng, cuts, armed)
        async with chatting(devices, rng, "canary-drop"):
            armed.set()
            async with asyncio.timeout(120):
                while cuts.total() < DROPS or len(cuts) < 3:
                    await asyncio.sleep(0.1)
            armed.clear()
        await wait_converged(devices, timeout=60)
        delivered = check_delivery(devices)
        print(f"cuts={dict(cuts)} sent={sum(len(d.sent) for d in devices)} delivered={delivered}")
    finally:
        for device in devices:
            await device.client.close()


async def test_a_call_fails_at_once_when_its_connection_drops(
    server: RunningServer, tmp_path: Path
) -> None:
    """The ack of a call whose connection dropped can never come: the caller
    learns it now, not after the call's timeout (python-socketio waits it out)."""
    device = await new_device(tmp_path, server.url, "alice")
    namespace = server.app.other_asgi_app.state.namespace
    entered, release = asyncio.Event(), asyncio.Event()
    original = namespace._handlers["sync"]

    async def stuck(conn: Any, data: Any) -> dict[str, Any]:
        entered.set()
        await release.wait()
        return {}

    namespace._handlers["sync"] = stuck
    try:
        call = asyncio.create_task(device.client.transport.call("sync", {}, timeout=3600))
        await asyncio.wait_for(entered.wait(), 10)
        assert sever(device.client)
        with pytest.raises(NotConnected):
            await asyncio.wait_for(call, 60)
    finally:
        namespace._handlers["sync"] = original
        release.set()
        await device.client.close()


async def test_a_closed_client_stops_reconnecting(server: RunningServer, tmp_path: Path) -> None:
    device = await new_device(tmp_path, server.url, "alice")
    await server.stop()
    sio = device.client.transport.sio
    await wait_for(lambda: sio._reconnect_task is not None, 10)
    await device.client.close()
    assert sio._reconnect_task is None or sio._reconnect_task.done()
    await server.start()  # same port: a client still trying would get in now
    await asyncio.sleep(1.5)  # longer than the first reconnection delay (0.5 s +- 0.5 s)
    assert not server.app.other_asgi_app.state.namespace._sockets


# -- a client frozen (SIGSTOP) for longer than the ping timeout ----------------------


async def read_lines(stream: asyncio.StreamReader, into: list[dict[str, Any]]) -> None:
    while line := await stream.readline():
        into.append(json.loads(line))


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)


async def test_client_frozen_beyond_the_ping_timeout(
    server_factory: Callable[..., Awaitable[RunningServer]], tmp_path: Path
) -> None:
    server = await server_factory(ping_interval_s=0.5, ping_timeout_s=0.5)
    namespace = server.app.other_asgi_app.state.namespace
    count = 30
    alice = await new_device(tmp_path, server.url, "alice")
    bob = await Client.create_account(
        tmp_path / "bob", server_url=server.url, username="bob", password=PASSWORD, kdf=FAST_KDF
    )
    bob_device = bob.device_id
    await bob.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration._client_process",
        str(tmp_path / "bob"),
        PASSWORD,
        "alice",
        str(count),
        str(count),
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []
    reader = asyncio.create_task(read_lines(proc.stdout, lines))

    def bob_online() -> bool:
        return any(s.device.device_id == bob_device for s in namespace._sockets.values())

    try:
        await wait_for(bob_online, 30)
        freezes = 0
        async with asyncio.timeout(120):
            for i in range(count):
                alice.sent.append(
                    ("bob", (await alice.client.send_text("bob", f"canary-pause alice #{i}")).id)
                )
                if i in (5, 18):
                    # Frozen mid-conversation: the server gives up on the socket.
                    proc.send_signal(signal.SIGSTOP)
                    await wait_for(lambda: not bob_online(), 30)
                    freezes += 1
                    proc.send_signal(signal.SIGCONT)
                await asyncio.sleep(0.1)
            assert await proc.wait() == 0
        await reader
        await wait_converged([alice], timeout=30)
        async with asyncio.timeout(30):  # bob's last messages may still be on their way
            while len(alice.received) < count:
                await asyncio.sleep(0.05)
                alice.drain()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await alice.client.close()

    queued = [line["queued"] for line in lines if "queued" in line]
    acked = [line["sent"] for line in lines if "sent" in line]
    shown = [line["received"] for line in lines if "received" in line]
    assert len(queued) == count and sorted(acked) == sorted(queued)
    assert shown == [m for _, m in alice.sent], "bob: each of alice's messages once, in order"
    alice.drain()
    assert [e.message.id for e in alice.received] == queued, "alice: bob's, once, in order"
    assert freezes == 2


# -- Redis dies and comes back under two server processes ------------------------------


def redis_alive(port: int) -> bool:
    ping = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "ping"], capture_output=True, text=True
    )
    return ping.stdout.strip() == "PONG"


async def kill_redis(port: int) -> None:
    info = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "info", "server"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pid = int(next(line for line in info.splitlines() if line.startswith("process_id:"))[11:])
    os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: not redis_alive(port), 10)


async def start_redis(port: int) -> None:
    subprocess.run(
        [
            *("redis-server", "--daemonize", "yes", "--bind", "127.0.0.1"),
            *("--port", str(port), "--save", "", "--appendonly", "no"),
        ],
        check=True,
        capture_output=True,
    )
    await wait_for(lambda: redis_alive(port), 10)


@pytest.mark.skipif(
    not (POSTGRES_URL and REDIS_URL and REDIS_URL.startswith("redis://127.0.0.1:")),
    reason="needs BISIK_TEST_POSTGRES_URL and a loopback BISIK_TEST_REDIS_URL (CI sets both)",
)
async def test_cross_process_delivery_recovers_after_a_redis_restart(tmp_path: Path) -> None:
    assert REDIS_URL is not None
    port = int(REDIS_URL.split(":")[2].split("/")[0])
    db_url, drop = await _postgres_database()
    nodes = [
        RunningServer(
            ServerConfig(data_dir=tmp_path / f"node{i}", database_url=db_url, redis_url=REDIS_URL)
        )
        for i in range(2)
    ]
    devices: list[Device] = []
    rng = random.Random(_seed())
    try:
        for node in nodes:
            await node.start()
        devices = [
            await new_device(tmp_path, node.url, name)
            for name, node in (("alice", nodes[0]), ("bob", nodes[1]))
        ]
        for outage in range(3):
            async with chatting(devices, rng, f"canary-redis-{outage}"):
                await asyncio.sleep(rng.uniform(0.3, 1.0))
                await kill_redis(port)
                try:
                    await asyncio.sleep(rng.uniform(0.5, 2.0))  # sends go on, stored in PostgreSQL
                finally:
                    await start_redis(port)
                await asyncio.sleep(rng.uniform(0.3, 1.0))
            await wait_converged(devices, timeout=60)
            check_delivery(devices)
    finally:
        if not redis_alive(port):
            await start_redis(port)
        for device in devices:
            await device.client.close()
        for node in nodes:
            await node.stop()
        await drop()


# -- the disk fills up, then space returns ----------------------------------------------


async def test_full_disk_refuses_clearly_and_recovers(tmp_path: Path) -> None:
    """Writes fail as on a full disk: sends are refused with ``unavailable`` (not
    ``internal``, no error logged), nothing half-written, reads still work; once
    space returns every queued message goes out, once, in order."""
    server = ServerProcess(tmp_path / "server", free_port(), max_file_bytes=1536 * 1024)
    await server.start()
    devices: list[Device] = []
    try:
        devices = [await new_device(tmp_path, server.url, n) for n in ("alice", "bob")]
        alice, bob = devices
        padding = "x" * 8000
        for i in range(160):  # ~2.5 MiB of envelopes: more than fits
            message = await alice.client.send_text("bob", f"canary-disk #{i} {padding}")
            alice.sent.append(("bob", message.id))
        async with asyncio.timeout(120):
            while "storage unavailable" not in server.log.read_text(errors="replace"):
                await asyncio.sleep(0.2)
        stuck = alice.client.pending_count()
        assert stuck > 0, "the disk never filled up"
        assert alice.client.connected and bob.client.connected
        assert (await bob.client.transport.call("sync", {"limit": 1}))["ok"] is True

        server.free_disk()
        await wait_converged(devices, timeout=120)
        check_delivery(devices)
        log = server.log.read_text(errors="replace")
        assert "Traceback" not in log and " ERROR " not in log, log[-2000:]
        print(f"queued while the disk was full: {stuck} of {len(alice.sent)}")
    finally:
        for device in devices:
            await device.client.close()
        server.stop()
