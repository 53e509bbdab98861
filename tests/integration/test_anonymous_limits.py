"""What a stranger can make the server keep or spend (issue 19, items 8 to 10).

Pairing channels (no account needed) are capped per address and in bytes, and
expire; a backup challenge belongs to the request that asked for it, so
nobody's request spoils another's; one-time keys cannot be drained by claims,
and a sender past a limit gets the fallback key instead of a refusal.

Loopback is exempt from per-address limits by default, so the servers here
lift the exemption (as in test_limits).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from bisik.crypto import IdentityKey, backup_auth_payload
from bisik.proto import MAX_RENDEZVOUS_BODY
from bisik.server._limits import RENDEZVOUS_WINDOW_S, WindowLimiter
from bisik.server.handlers.rendezvous import LINKING_TTL_MS, PAIRING_TTL_MS
from bisik.server.stores.schema import rendezvous, rendezvous_messages
from tests.conftest import RunningServer
from tests.integration.test_bad_input import Dev, Sock, World, assert_error, login, post, register
from tests.integration.test_bad_input import world as bad_input_world
from tests.integration.test_limits import assert_limited

ServerFactory = Callable[..., Awaitable[RunningServer]]
STRICT: dict[str, Any] = {"rate_limit_exempt": ()}


@pytest.fixture
async def world(server: RunningServer) -> AsyncIterator[World]:
    """alice, bob and carol of test_bad_input, registered and connected."""
    async for built in bad_input_world.__wrapped__(server):
        yield built


async def _rows(server: RunningServer, channel: str) -> tuple[int, int]:
    """How many rows the server keeps for a channel: (channels, messages)."""
    async with server.services.engine.connect() as conn:
        channels = (
            await conn.execute(select(func.count()).where(rendezvous.c.channel == channel))
        ).scalar_one()
        messages = (
            await conn.execute(select(func.count()).where(rendezvous_messages.c.channel == channel))
        ).scalar_one()
    return int(channels), int(messages)


# -- 8: rendezvous ----------------------------------------------------------------------


async def test_pairing_channels_per_address_are_capped(server_factory: ServerFactory) -> None:
    server = await server_factory(**STRICT)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        opened = []
        for _ in range(64):
            resp = await post(http, "/v1/rendezvous", {})
            if resp.status_code != 200:
                break
            opened.append(resp.json())
        assert_limited(resp)
        assert len(opened) == server.config.rendezvous_channels_per_ip
        # The channels already open still work.
        first = opened[0]
        written = await post(
            http,
            f"/v1/rendezvous/{first['channel']}/write",
            {"token": first["token"], "body": "QQ"},
        )
        assert written.status_code == 200, written.text


async def test_a_pairing_channel_holds_a_bounded_number_of_bytes(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(**STRICT)
    body = "A" * MAX_RENDEZVOUS_BODY
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        opened = (await post(http, "/v1/rendezvous", {})).json()
        channel, token = opened["channel"], opened["token"]
        accepted = 0
        for _ in range(64):  # 57 MB if nothing stops it
            resp = await post(
                http, f"/v1/rendezvous/{channel}/write", {"token": token, "body": body}
            )
            if resp.status_code != 200:
                break
            accepted += len(body)
        assert_error(resp, 413, "payload_too_large", "a full channel")
        cap = server.config.rendezvous_bytes_per_channel
        assert cap - len(body) < accepted <= cap
        # The claimed side has the same cap on the same channel: the total is bounded.
        claimed = (await post(http, f"/v1/rendezvous/{channel}/claim", {})).json()
        resp = await post(
            http, f"/v1/rendezvous/{channel}/write", {"token": claimed["token"], "body": body}
        )
        assert_error(resp, 413, "payload_too_large", "the other side of a full channel")
        # Small messages still fit until the cap.
        left = cap - accepted
        if left:
            resp = await post(
                http,
                f"/v1/rendezvous/{channel}/write",
                {"token": token, "body": "B" * min(left, MAX_RENDEZVOUS_BODY)},
            )
            assert resp.status_code == 200, resp.text


async def test_expired_pairing_channels_are_deleted(server_factory: ServerFactory) -> None:
    """Without any further request: nothing a stranger wrote outlives the channel."""
    server = await server_factory(purge_interval_s=0.05)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        opened = (await post(http, "/v1/rendezvous", {})).json()
        channel = opened["channel"]
        resp = await post(
            http, f"/v1/rendezvous/{channel}/write", {"token": opened["token"], "body": "QUJD"}
        )
        assert resp.status_code == 200, resp.text
        live = (await post(http, "/v1/rendezvous", {})).json()["channel"]
    assert await _rows(server, channel) == (1, 1)
    async with server.services.engine.begin() as conn:
        await conn.execute(
            update(rendezvous).where(rendezvous.c.channel == channel).values(expires_at=1)
        )
    async with asyncio.timeout(10):
        while await _rows(server, channel) != (0, 0):
            await asyncio.sleep(0.05)
    assert await _rows(server, live) == (1, 0), "a live channel was deleted"


# -- 9: backup challenges ---------------------------------------------------------------


async def _put_backup(world: World, name: str) -> IdentityKey:
    owner_key = IdentityKey.generate()
    put = await world.http.put(
        "/v1/backup",
        json={"auth_key": owner_key.public_key, "ciphertext": "QUJD" * 10},
        headers={"authorization": f"Bearer {world.tokens[name]}"},
    )
    assert put.status_code == 200, put.text
    return owner_key


async def _challenge(http: httpx.AsyncClient, username: str) -> str:
    resp = await post(http, "/v1/backup/challenge", {"username": username})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["challenge"])


async def _fetch(
    http: httpx.AsyncClient, username: str, challenge: str, key: IdentityKey
) -> httpx.Response:
    signature = key.sign(backup_auth_payload(challenge=challenge, username=username))
    return await post(
        http,
        "/v1/backup/fetch",
        {"username": username, "challenge": challenge, "signature": signature},
    )


async def test_a_strangers_backup_challenge_does_not_spoil_the_owners(world: World) -> None:
    http = world.http
    owner_key = await _put_backup(world, "alice")
    mine = await _challenge(http, "alice")
    theirs = await _challenge(http, "alice")  # anyone may ask, without an account
    resp = await _fetch(http, "alice", mine, owner_key)
    assert resp.status_code == 200, resp.text
    assert resp.json()["ciphertext"] == "QUJD" * 10
    # Single use.
    assert_error(await _fetch(http, "alice", mine, owner_key), 401, "unauthorized", "reused")
    # Each request's challenge is its own: the other one is still good once.
    resp = await _fetch(http, "alice", theirs, owner_key)
    assert resp.status_code == 200, resp.text


async def test_backup_challenges_are_bounded_short_lived_and_per_account(world: World) -> None:
    from bisik.server.handlers.backups import MAX_CHALLENGES
    from bisik.server.stores.schema import backup_challenges

    http = world.http
    alice_key = await _put_backup(world, "alice")
    carol_key = await _put_backup(world, "carol")
    oldest = await _challenge(http, "alice")
    for _ in range(MAX_CHALLENGES + 5):
        await _challenge(http, "alice")
    mine = await _challenge(http, "alice")
    async with world.server.services.engine.connect() as conn:
        held = (await conn.execute(select(func.count()).select_from(backup_challenges))).scalar()
    assert held == MAX_CHALLENGES
    # A flood evicts the oldest; the newest, the owner's own, still works.
    assert_error(await _fetch(http, "alice", oldest, alice_key), 401, "unauthorized", "evicted")
    assert (await _fetch(http, "alice", mine, alice_key)).status_code == 200
    # A challenge asked for alice does not open carol's backup, even signed by carol's key.
    for_alice = await _challenge(http, "alice")
    resp = await _fetch(http, "carol", for_alice, carol_key)
    assert_error(resp, 401, "unauthorized", "another account's challenge")
    # An expired challenge is refused.
    stale = await _challenge(http, "carol")
    async with world.server.services.engine.begin() as conn:
        await conn.execute(update(backup_challenges).values(expires_at=1))
    assert_error(await _fetch(http, "carol", stale, carol_key), 401, "unauthorized", "expired")
    assert (await _fetch(http, "carol", await _challenge(http, "carol"), carol_key)).is_success


# -- 10: one-time keys ------------------------------------------------------------------


async def _key_count(http: httpx.AsyncClient, token: str) -> dict[str, Any]:
    resp = await http.get("/v1/keys/count", headers={"authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def _claim(http: httpx.AsyncClient, token: str, *targets: Dev) -> dict[str, Any]:
    resp = await post(http, "/v1/keys/claim", {"devices": [t.ref() for t in targets]}, token)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def test_one_time_keys_cannot_be_drained(server_factory: ServerFactory) -> None:
    server = await server_factory(**STRICT)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        bob, mallory, alice = Dev.new("bob"), Dev.new("mallory"), Dev.new("alice")
        for dev in (bob, mallory, alice):
            await register(http, dev, otks=50)
        bob_token, mallory_token = await login(http, bob), await login(http, mallory)
        claims = [(await _claim(http, mallory_token, bob))["keys"] for _ in range(50)]
        # Every claim is answered with a key; past the limit, the fallback key.
        assert all(len(keys) == 1 for keys in claims)
        one_time = [k for (k,) in claims if not k["fallback"]]
        assert len(one_time) < 25
        counts = await _key_count(http, bob_token)
        assert counts["one_time_keys"] == 50 - len(one_time)
        assert counts["one_time_keys"] > server.config.low_key_threshold
        # A legitimate sender is never blocked: the target's limit is spent, alice gets
        # the fallback key and can start a session with it.
        (key,) = (await _claim(http, await login(http, alice), bob))["keys"]
        assert key["fallback"] is True
        # The socket event is limited in the same way.
        sock = Sock()
        await sock.connect(server.url, {"token": mallory_token})
        try:
            ack = await sock.call("keys_claim", {"devices": [bob.ref()]})
        finally:
            await sock.close()
        assert ack["ok"] is True and ack["keys"][0]["fallback"] is True, ack
        assert (await _key_count(http, bob_token))["one_time_keys"] == counts["one_time_keys"]


async def test_one_time_key_claims_per_requester(server_factory: ServerFactory) -> None:
    server = await server_factory(**STRICT, key_claims_per_device_per_hour=3)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        devs = [Dev.new(f"u{i}{secrets.token_hex(2)}") for i in range(6)]
        for dev in devs:
            await register(http, dev, otks=5)
        mallory, alice = devs[0], devs[1]
        targets = devs[2:]
        keys = (await _claim(http, await login(http, mallory), *targets))["keys"]
        assert [k["fallback"] for k in keys] == [False, False, False, True]
        # Another requester is not affected by mallory's spending.
        keys = (await _claim(http, await login(http, alice), *targets))["keys"]
        assert [k["fallback"] for k in keys] == [False, False, False, True]
        assert [k["username"] for k in keys] == [t.username for t in targets]


def test_window_limiter_bounds_what_is_alive_at_once() -> None:
    now = [0.0]
    window = WindowLimiter(count=2, window_s=10, clock=lambda: now[0])
    assert [window.take("a"), window.take("a")] == [0, 0]
    assert window.take("a") == pytest.approx(10)  # until the first leaves the window
    assert window.take("b") == 0  # keys are independent
    now[0] += 9
    assert window.take("a") == pytest.approx(1)  # refusals are not counted
    now[0] += 1  # both first ones leave
    assert [window.take("a"), window.take("a")] == [0, 0]
    assert window.take("a") == pytest.approx(10)
    # A channel lives at most as long as the window over which openings are counted.
    assert PAIRING_TTL_MS + LINKING_TTL_MS <= RENDEZVOUS_WINDOW_S * 1000


async def test_socket_key_claims_count_per_requester(server_factory: ServerFactory) -> None:
    """``keys_claim`` over the socket spends the claiming device's allowance as
    the HTTP claim does (it counted only the claimed device's)."""
    server = await server_factory(**STRICT, key_claims_per_device_per_hour=2)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        devs = [Dev.new(f"s{i}{secrets.token_hex(2)}") for i in range(4)]
        for dev in devs:
            await register(http, dev, otks=5)
        mallory, targets = devs[0], devs[1:]
        sock = Sock()
        await sock.connect(server.url, {"token": await login(http, mallory)})
        try:
            ack = await sock.call("keys_claim", {"devices": [t.ref() for t in targets]})
        finally:
            await sock.close()
    assert [k["fallback"] for k in ack["keys"]] == [False, False, True], ack
