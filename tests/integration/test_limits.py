"""Abuse limits: registrations and sign-ins per IP, messages per device, sockets per IP.

Loopback is exempt by default (tests and benchmarks run there), so these
servers lift the exemption and set small limits. Refill rates are tiny so that
no outcome depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bisik.client import MessageFailed, MessageReceived
from bisik.crypto import b64encode
from bisik.server import free_port
from bisik.server._limits import RateLimiter
from tests.conftest import RunningServer
from tests.integration._server_process import ServerProcess
from tests.integration.test_bad_input import Dev, Sock, login, post, register
from tests.integration.test_faults import new_device
from tests.integration.test_socket_limits import (
    connect_once_admitted,
    refused_at_handshake,
    refused_once_admitted,
)

ServerFactory = Callable[..., Awaitable[RunningServer]]
STRICT: dict[str, Any] = {"rate_limit_exempt": ()}
SLOW = 0.0001  # a refill so slow that nothing comes back during a test


def assert_limited(resp: httpx.Response) -> None:
    assert resp.status_code == 429, resp.text
    assert resp.json()["error"]["code"] == "rate_limited"
    assert "retry" in resp.json()["error"]["message"]
    assert int(resp.headers["retry-after"]) >= 1


async def test_registrations_per_ip(server_factory: ServerFactory) -> None:
    server = await server_factory(**STRICT, registrations_per_ip_per_min=3)
    async with httpx.AsyncClient(base_url=server.url) as http:
        for _ in range(3):
            await register(http, Dev.new(f"u{secrets.token_hex(3)}"))
        late = Dev.new("toolate")
        assert_limited(await post(http, "/v1/accounts", late.register_body()))
        # Refused before anything was read or stored.
        resp = await http.get("/v1/users/toolate/devices")
        assert resp.status_code == 401


async def test_sign_ins_per_ip(server_factory: ServerFactory) -> None:
    server = await server_factory(**STRICT, sign_ins_per_ip_per_min=4)
    async with httpx.AsyncClient(base_url=server.url) as http:
        dev = Dev.new("alice")
        await register(http, dev)
        token = await login(http, dev)  # a challenge and a token: 2 of 4
        await login(http, dev)  # 4 of 4
        assert_limited(await post(http, "/v1/auth/challenge", dev.ref()))
        assert_limited(await post(http, "/v1/backup/challenge", {"username": "alice"}))
        # Signed-in devices carry on: only sign-in attempts are limited.
        resp = await http.get("/v1/keys/count", headers={"authorization": f"Bearer {token}"})
        assert resp.status_code == 200


async def test_loopback_is_exempt_by_default(server: RunningServer) -> None:
    limits = server.app.other_asgi_app.state.namespace.limits
    async with httpx.AsyncClient(base_url=server.url) as http:
        dev = Dev.new("alice")
        await register(http, dev)
        for _ in range(limits.sign_ins.burst):  # twice the limit: challenge + token each
            await login(http, dev)


async def test_message_rate_per_device(server_factory: ServerFactory) -> None:
    server = await server_factory(**STRICT, messages_per_device_per_s=SLOW, message_burst=5)
    async with httpx.AsyncClient(base_url=server.url) as http:
        devs = {name: Dev.new(name) for name in ("alice", "bob", "carol", "mallory")}
        socks = {}
        for name, dev in devs.items():
            await register(http, dev)
            socks[name] = Sock()
            await socks[name].connect(server.url, {"token": await login(http, dev)})
        try:

            async def send(sender: str) -> Any:
                return await socks[sender].call(
                    "send",
                    {
                        "client_message_id": secrets.token_urlsafe(12),
                        "envelopes": [devs["bob"].envelope(b64encode(os.urandom(16)))],
                    },
                )

            for _ in range(5):
                assert (await send("alice"))["ok"] is True
            over = await send("alice")
            assert over["ok"] is False and over["error"]["code"] == "rate_limited", over
            # send_many counts each message: carol's five in one frame spend her burst.
            many = [
                {
                    "client_message_id": secrets.token_urlsafe(12),
                    "envelopes": [devs["bob"].envelope(b64encode(os.urandom(16)))],
                }
                for _ in range(5)
            ]
            assert (await socks["carol"].call("send_many", {"messages": many}))["ok"] is True
            over = await send("carol")
            assert over["ok"] is False and over["error"]["code"] == "rate_limited", over
            many[0]["client_message_id"] = secrets.token_urlsafe(12)
            over = await socks["carol"].call("send_many", {"messages": many[:1]})
            assert over["ok"] is False and over["error"]["code"] == "rate_limited", over
            # Other devices are not affected, nor alice's other events.
            assert (await send("mallory"))["ok"] is True
            await socks["alice"].assert_usable()
            assert len(await socks["bob"].pending()) == 11
        finally:
            for sock in socks.values():
                await sock.close()


async def test_connections_per_ip(server_factory: ServerFactory) -> None:
    server = await server_factory(**STRICT, max_connections_per_ip=2)
    async with httpx.AsyncClient(base_url=server.url) as http:
        dev = Dev.new("alice")
        await register(http, dev)
        token = await login(http, dev)
        first, second = Sock(), Sock()
        await first.connect(server.url, {"token": token})
        await second.connect(server.url, {"token": token})
        try:
            # Refused at the websocket handshake (HTTP 429), before authentication.
            body = await refused_at_handshake(server)
            assert body["error"]["code"] == "too_many_connections", body
            await second.close()
            # Bad tokens count while their socket is open only: they do not use up the cap.
            for _ in range(3):
                reason = await refused_once_admitted(server, {"token": "x" * 43})
                assert reason["data"]["code"] == "unauthorized", reason
            third = Sock()
            await connect_once_admitted(third, server, token)
            await third.assert_usable()
            await third.close()
        finally:
            await first.close()


async def test_rate_limited_messages_wait_in_the_outbox(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """The SDK keeps a refused message queued, in order, and sends it once allowed."""
    server = await server_factory(**STRICT, messages_per_device_per_s=4, message_burst=2)
    clients = []
    try:
        for name in ("alice", "bob"):
            clients.append((await new_device(tmp_path, server.url, name)).client)
        alice, bob = clients
        events, inbox = alice.subscribe(), bob.subscribe()
        sent = [await alice.send_text("bob", f"burst {i}") for i in range(8)]
        assert await alice.drain_outbox(60)
        got = []
        async with asyncio.timeout(30):
            while len(got) < len(sent):
                event = await inbox.get()
                if isinstance(event, MessageReceived):
                    got.append(event.message.body)
        assert got == [m.body for m in sent]
        failed = [e for e in _drain(events) if isinstance(e, MessageFailed)]
        assert not failed, failed
    finally:
        for client in clients:
            await client.close()


def _drain(queue: asyncio.Queue[Any]) -> list[Any]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_token_bucket() -> None:
    now = [0.0]
    bucket = RateLimiter(per_s=2, burst=3, clock=lambda: now[0])
    assert [bucket.take("a") for _ in range(3)] == [0, 0, 0]
    assert bucket.take("a") == pytest.approx(0.5)
    assert bucket.take("b") == 0  # keys are independent
    now[0] += 0.5
    assert bucket.take("a") == 0
    now[0] += 100
    assert [bucket.take("a") for _ in range(4)][:3] == [0, 0, 0]  # refills to the burst only


def test_token_bucket_takes_several() -> None:
    now = [0.0]
    bucket = RateLimiter(per_s=2, burst=3, clock=lambda: now[0])
    assert bucket.take("a", 2) == 0
    assert bucket.take("a", 2) == pytest.approx(0.5)  # one left, two needed: refused
    now[0] += 0.5
    assert bucket.take("a", 2) == 0
    # More than the burst at once passes on a full bucket and is owed afterwards.
    now[0] += 100
    assert bucket.take("a", 7) == 0
    assert bucket.take("a") == pytest.approx(2.5)  # -4 tokens: 5 to earn back before one


async def test_bisik_server_flags(tmp_path: Path) -> None:
    """`bisik server --limit-loopback --max-registrations-per-min 2` limits this very test."""
    server = ServerProcess(
        tmp_path / "server",
        free_port(),
        ["--limit-loopback", "--max-registrations-per-min", "2"],
    )
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for name in ("alice", "bob"):
                await register(http, Dev.new(name))
            assert_limited(await post(http, "/v1/accounts", Dev.new("carol").register_body()))
    finally:
        server.stop()
