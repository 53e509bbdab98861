"""Sockets below and past authentication: the per-IP cap counts every transport,
an unauthenticated socket is closed, and ``devices_watch`` is capped and rate-limited.

Loopback is exempt from the per-IP and per-device limits by default, so the
servers here lift the exemption where a limit is under test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import socketio
import websockets
from websockets.asyncio.client import ClientConnection

from tests.conftest import RunningServer
from tests.integration.test_bad_input import Dev, Sock, login, register

ServerFactory = Callable[..., Awaitable[RunningServer]]
STRICT: dict[str, Any] = {"rate_limit_exempt": ()}
# Long enough that no socket of a test that does not wait for it reaches it.
NEVER = 600.0


def engineio_url(server: RunningServer) -> str:
    return server.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"


async def raw_socket(server: RunningServer) -> ClientConnection:
    """A bare Engine.IO websocket (no Socket.IO CONNECT): what an attacker holds open."""
    ws = await websockets.connect(engineio_url(server))
    opened = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(opened, str) and opened.startswith("0{"), opened
    return ws


async def closed_by_server(ws: ClientConnection) -> None:
    """Read (answering pings) until the server closes the socket."""
    async with asyncio.timeout(30):  # a hang guard, far above any deadline set here
        async for frame in ws:
            if frame == "2":
                await ws.send("3")


async def refused_at_handshake(server: RunningServer) -> dict[str, Any]:
    """Open a websocket that the server must refuse before accepting it; its JSON body."""
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        ws = await websockets.connect(engineio_url(server))
        await ws.close()
    response = refused.value.response
    assert response.status_code == 429, response
    body: dict[str, Any] = json.loads(response.body or b"{}")
    return body


async def connect_once_admitted(sock: Sock, server: RunningServer, token: str) -> None:
    """Connect ``sock``; a slot freed by a close may take a moment to be released."""
    for _ in range(100):
        try:
            await sock.connect(server.url, {"token": token})
            return
        except socketio.exceptions.ConnectionError:
            await sock.close()
            await asyncio.sleep(0.05)
    raise AssertionError("no slot came free")


async def refused_once_admitted(server: RunningServer, auth: Any) -> dict[str, Any]:
    """Connect with ``auth``, which the server refuses; its reason, once a slot is free
    to read it (a slot freed by a close may take a moment to be released)."""
    for _ in range(100):
        sock = Sock()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sock.connect(server.url, auth)
        await sock.close()
        if isinstance(sock.refusal, dict):  # else refused at the handshake
            return sock.refusal
        await asyncio.sleep(0.05)
    raise AssertionError("no slot came free")


async def signed_in(server: RunningServer, name: str = "alice") -> tuple[Dev, str]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        dev = Dev.new(name)
        await register(http, dev)
        return dev, await login(http, dev)


# -- the per-IP cap counts transports, not authenticated sockets ------------------------


async def test_unauthenticated_sockets_count_against_the_cap(server_factory: ServerFactory) -> None:
    server = await server_factory(**STRICT, max_connections_per_ip=3, socket_auth_timeout_s=NEVER)
    _, token = await signed_in(server)
    held = [await raw_socket(server) for _ in range(3)]
    try:
        # A fourth transport is refused at the handshake, before any state is kept.
        body = await refused_at_handshake(server)
        assert body["error"]["code"] == "too_many_connections", body
        # So is a real client: the cap is the address's, whatever its sockets did.
        refused = Sock()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.connect(server.url, {"token": token})
        await refused.close()
        # Closing one frees its slot.
        await held.pop().close()
        sock = Sock()
        await connect_once_admitted(sock, server, token)
        await sock.assert_usable()
        await sock.close()
    finally:
        for ws in held:
            await ws.close()


# -- a socket that does not authenticate in time is closed ------------------------------


async def test_unauthenticated_sockets_are_closed(server_factory: ServerFactory) -> None:
    server = await server_factory(**STRICT, max_connections_per_ip=3, socket_auth_timeout_s=1.0)
    _, token = await signed_in(server)
    authenticated = Sock()
    await authenticated.connect(server.url, {"token": token})
    silent = await raw_socket(server)
    bad_token = await raw_socket(server)
    try:
        # A refused CONNECT leaves the transport open for another try: it is
        # closed all the same once the time to authenticate is up.
        await bad_token.send('40{"token":"' + "x" * 43 + '"}')
        refusal = await asyncio.wait_for(bad_token.recv(), 10)
        assert isinstance(refusal, str) and refusal.startswith("44"), refusal
        await closed_by_server(silent)
        await closed_by_server(bad_token)
        # The authenticated socket, older than both, is left alone.
        await authenticated.assert_usable()
        # Their slots are free again: the cap is 3 and two more sockets are admitted.
        others = [Sock(), Sock()]
        for sock in others:
            await connect_once_admitted(sock, server, token)
        for sock in others:
            await sock.assert_usable()
            await sock.close()
    finally:
        await silent.close()
        await bad_token.close()
        await authenticated.close()


async def test_exempt_addresses_must_authenticate_too(server_factory: ServerFactory) -> None:
    # Loopback is exempt from the cap, not from authenticating.
    server = await server_factory(socket_auth_timeout_s=1.0)
    silent = await raw_socket(server)
    try:
        await closed_by_server(silent)
    finally:
        await silent.close()


# -- devices_watch ---------------------------------------------------------------------


async def test_devices_watch_is_capped_per_socket(server_factory: ServerFactory) -> None:
    server = await server_factory(max_watched_users_per_socket=10)
    _, token = await signed_in(server)
    sock, other = Sock(), Sock()
    await sock.connect(server.url, {"token": token})
    await other.connect(server.url, {"token": token})
    try:
        ten = [f"user{i}" for i in range(10)]
        assert await sock.call("devices_watch", {"usernames": ten}) == {"ok": True, "watching": 10}
        # Names already watched cost nothing.
        again = await sock.call("devices_watch", {"usernames": ten[:5]})
        assert again == {"ok": True, "watching": 5}
        # One more is over the cap: refused whole, with its own code.
        await sock.expect_error(
            "devices_watch", {"usernames": ["user0", "user10"]}, "too_many_watched"
        )
        await sock.expect_error(
            "devices_watch", {"usernames": [f"new{i}" for i in range(5000)]}, "too_many_watched"
        )
        # The cap is per socket: another socket of the same device starts afresh.
        watched = await other.call("devices_watch", {"usernames": ["user10", *ten[1:]]})
        assert watched == {"ok": True, "watching": 10}
    finally:
        await sock.close()
        await other.close()


async def test_devices_watch_is_rate_limited(server_factory: ServerFactory) -> None:
    server = await server_factory(**STRICT, devices_watch_per_min=3)
    _, token = await signed_in(server)
    _, bobs = await signed_in(server, "bob")
    sock, other = Sock(), Sock()
    await sock.connect(server.url, {"token": token})
    await other.connect(server.url, {"token": token})
    bob = Sock()
    await bob.connect(server.url, {"token": bobs})
    try:
        for i in range(3):
            watched = await sock.call("devices_watch", {"usernames": [f"u{i}"]})
            assert watched["ok"] is True, watched
        await sock.expect_error("devices_watch", {"usernames": ["u3"]}, "rate_limited")
        # Per device: its other sockets share the rate; other devices do not.
        await other.expect_error("devices_watch", {"usernames": ["u3"]}, "rate_limited")
        assert (await bob.call("devices_watch", {"usernames": ["u3"]}))["ok"] is True
    finally:
        await sock.close()
        await other.close()
        await bob.close()
