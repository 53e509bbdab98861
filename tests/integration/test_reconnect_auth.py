"""Reconnecting with the access token in hand, and what the server still checks on it.

After a server restart every client comes back at once; the SDK reconnects with
the token it holds instead of signing in again. The server must still refuse
that token once it has expired or its device was removed, and the SDK must then
sign in again by itself.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
from sqlalchemy import func, select, update

from bisik.client import Client, MessageReceived
from bisik.server.stores.schema import access_tokens
from tests import _internals as internals
from tests.conftest import ClientFactory, RunningServer, next_event
from tests.integration.test_bad_input import refusal_code, refused
from tests.integration.test_devices import link


async def issued_tokens(server: RunningServer) -> int:
    async with server.services.engine.connect() as conn:
        count = await conn.execute(select(func.count()).select_from(access_tokens))
        return int(count.scalar_one())


async def expire(server: RunningServer, token: str) -> None:
    """Make ``token`` expired on the server only (its holder still thinks it fresh)."""
    digest = hashlib.sha256(token.encode()).digest()
    async with server.services.engine.begin() as conn:
        await conn.execute(
            update(access_tokens).where(access_tokens.c.token_hash == digest).values(expires_at=1)
        )


async def restart(server: RunningServer, *clients: Client) -> None:
    await server.stop()
    async with asyncio.timeout(10):
        while any(c.connected for c in clients):
            await asyncio.sleep(0.02)
    await server.start()
    for client in clients:
        await asyncio.wait_for(client.synced.wait(), 20)


def held_token(client: Client) -> str:
    token = internals.access_token(client)
    assert token is not None
    return token


async def assert_talks(sender: Client, receiver: Client, body: str) -> None:
    inbox = receiver.subscribe()
    sent = await sender.send_text(receiver.username, body)
    await sender.wait_sent(sent.id, timeout=15)
    assert (await next_event(inbox, MessageReceived, timeout=15)).message.body == body


async def test_a_restart_costs_no_sign_in(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    before = await issued_tokens(server), held_token(alice), held_token(bob)
    await restart(server, alice, bob)
    assert (await issued_tokens(server), held_token(alice), held_token(bob)) == before
    await assert_talks(alice, bob, "after the restart, same tokens")


async def test_a_token_expired_on_the_server_is_replaced_by_a_sign_in(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    old = held_token(alice)
    await expire(server, old)
    assert refusal_code(await refused(server.url, {"token": old})) == "token_expired"
    # The client reconnects with it, is refused, signs in and is back.
    await restart(server, alice, bob)
    assert held_token(alice) != old
    # Refused as expired, or as unknown once the sign-in swept expired tokens away.
    reason = refusal_code(await refused(server.url, {"token": old}))
    assert reason in ("token_expired", "unauthorized")
    await assert_talks(bob, alice, "alice signed in again")


async def test_connect_signs_in_again_when_its_token_is_refused(
    make_client: ClientFactory, server: RunningServer
) -> None:
    """An explicit ``connect`` (no background retry) with a stale token in hand."""
    alice = await make_client("alice")
    bob = await make_client("bob")
    old = held_token(alice)
    await alice.transport.sio.disconnect()
    await expire(server, old)
    await alice.connect()
    await asyncio.wait_for(alice.synced.wait(), 10)
    assert held_token(alice) != old
    await assert_talks(alice, bob, "connected with a fresh token")


async def test_the_token_of_a_removed_device_dies_with_it(
    make_client: ClientFactory, tmp_path: Path, server: RunningServer
) -> None:
    alice = await make_client("alice")
    phone = await link(alice, tmp_path / "phone")
    try:
        await phone.connect()
        await asyncio.wait_for(phone.synced.wait(), 10)
        token = held_token(phone)
        await alice.remove_device(phone.device_id)
        # Reused on a socket or over HTTP, on this server and after a restart.
        for _ in range(2):
            assert refusal_code(await refused(server.url, {"token": token})) == "unauthorized"
            async with httpx.AsyncClient(base_url=server.url) as http:
                resp = await http.get(
                    "/v1/keys/count", headers={"authorization": f"Bearer {token}"}
                )
            assert resp.status_code == 401
            assert resp.json()["error"]["code"] == "unauthorized"
            await server.stop()
            await server.start()
    finally:
        await phone.close()
