"""Hostile and malformed input on every HTTP endpoint and every socket event.

Each refusal must carry a clear error code (never ``internal``, never a 500),
must leave stored data alone, and must leave the server working: the same
socket still answers a valid ``sync``, and a normal alice -> bob message still
gets through afterwards.

The devices here are built by hand (raw Ed25519/Curve25519 keys and the
payload builders from ``bisik.crypto``) so that every field can be forged; the
last test drives the real client SDK through a server that has just been
attacked.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import socketio

from bisik.client import MessageReceived
from bisik.crypto import (
    IdentityKey,
    auth_payload,
    b64encode,
    device_payload,
    one_time_key_payload,
)
from bisik.server import ServerConfig
from tests.conftest import ClientFactory, RunningServer, close_socket_client, next_event

ServerFactory = Callable[..., Awaitable[RunningServer]]

MAX_BODY: int = ServerConfig.max_body_bytes  # the default the fixtures' servers run with
DELETE = object()  # marks a field to remove in ``edited``


@pytest.fixture(autouse=True)
def _no_logged_errors(caplog: pytest.LogCaptureFixture) -> Any:
    """Bad input is not a bug: nothing may reach the ERROR log while a test runs."""
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, "\n".join(f"{r.name}: {r.getMessage()}" for r in errors)


# -- hand-built devices -----------------------------------------------------------


def _curve_key() -> str:
    # The server never uses a Curve25519 key, it only relays it: any 32 bytes do.
    return b64encode(os.urandom(32))


@dataclass
class Dev:
    """A device whose every key and signature the test controls."""

    username: str
    device_id: str
    identity: IdentityKey  # the user's identity key
    key: IdentityKey  # the device's own Ed25519 key
    curve25519: str

    @classmethod
    def new(cls, username: str, device_id: str | None = None) -> Dev:
        return cls(
            username,
            device_id or f"DEV{secrets.token_hex(4).upper()}",
            IdentityKey.generate(),
            IdentityKey.generate(),
            _curve_key(),
        )

    def device_keys(self) -> dict[str, Any]:
        payload = device_payload(
            username=self.username,
            device_id=self.device_id,
            curve25519=self.curve25519,
            ed25519=self.key.public_key,
            identity_key=self.identity.public_key,
        )
        return {
            "username": self.username,
            "device_id": self.device_id,
            "curve25519": self.curve25519,
            "ed25519": self.key.public_key,
            "identity_key": self.identity.public_key,
            "signatures": {
                "identity": self.identity.sign(payload),
                "device": self.key.sign(payload),
            },
        }

    def signed_key(
        self,
        key_id: str | None = None,
        *,
        fallback: bool = False,
        signer: IdentityKey | None = None,
    ) -> dict[str, str]:
        key_id = key_id or secrets.token_hex(4)
        key = _curve_key()
        payload = one_time_key_payload(key_id=key_id, key=key, fallback=fallback)
        return {"key_id": key_id, "key": key, "signature": (signer or self.key).sign(payload)}

    def register_body(self, *, otks: int = 5, invite: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "username": self.username,
            "device": self.device_keys(),
            "one_time_keys": [self.signed_key() for _ in range(otks)],
            "fallback_key": self.signed_key(fallback=True),
        }
        if invite is not None:
            body["invite"] = invite
        return body

    def ref(self) -> dict[str, str]:
        return {"username": self.username, "device_id": self.device_id}

    def envelope(self, body: str = "T2xtIGNpcGhlcnRleHQ", type_: int = 1) -> dict[str, Any]:
        return {**self.ref(), "type": type_, "body": body}


def edited(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``body`` with the dotted ``path`` set to ``value`` (or removed)."""
    out = copy.deepcopy(body)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


# -- HTTP helpers ---------------------------------------------------------------------


async def post(
    http: httpx.AsyncClient, path: str, body: Any, token: str | None = None
) -> httpx.Response:
    """POST ``body`` as JSON; ``ensure_ascii`` lets lone surrogates through as escapes."""
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return await http.post(path, content=json.dumps(body).encode(), headers=headers)


def assert_error(resp: httpx.Response, status: int, code: str, case: str = "") -> None:
    assert resp.status_code == status, f"{case}: HTTP {resp.status_code} {resp.text[:300]}"
    body = resp.json()
    assert set(body) == {"error"}, f"{case}: {body}"
    assert body["error"]["code"] == code, f"{case}: {body}"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], case


async def register(http: httpx.AsyncClient, dev: Dev, **kwargs: Any) -> None:
    resp = await post(http, "/v1/accounts", dev.register_body(**kwargs))
    assert resp.status_code == 200, resp.text


async def challenge(http: httpx.AsyncClient, dev: Dev) -> str:
    resp = await post(http, "/v1/auth/challenge", dev.ref())
    assert resp.status_code == 200, resp.text
    return str(resp.json()["challenge"])


def token_request(dev: Dev, chal: str, signer: IdentityKey | None = None) -> dict[str, str]:
    payload = auth_payload(challenge=chal, username=dev.username, device_id=dev.device_id)
    return {**dev.ref(), "challenge": chal, "signature": (signer or dev.key).sign(payload)}


async def login(http: httpx.AsyncClient, dev: Dev) -> str:
    resp = await post(http, "/v1/auth/token", token_request(dev, await challenge(http, dev)))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["token"])


# -- socket helpers -------------------------------------------------------------------


class Sock:
    """A raw Socket.IO connection: no SDK between the test and the wire."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        self.pushed: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.refusal: Any = None
        self.sio.on("envelope", self._on_envelope)
        self.sio.on("connect_error", self._on_connect_error)

    async def _on_envelope(self, data: Any) -> None:
        await self.pushed.put(data)

    async def _on_connect_error(self, data: Any = None) -> None:
        self.refusal = data

    async def connect(self, url: str, auth: Any) -> None:
        await self.sio.connect(url, auth=auth, transports=["websocket"], wait_timeout=5)

    async def call(self, event: Any, data: Any = None, timeout: float = 5.0) -> Any:
        return await self.sio.call(event, data, timeout=timeout)

    async def assert_usable(self, case: str = "") -> None:
        ack = await self.call("sync", {})
        assert ack["ok"] is True, f"{case}: the connection stopped working: {ack}"

    async def expect_error(self, event: Any, data: Any, code: str, case: str = "") -> None:
        ack = await self.call(event, data)
        assert isinstance(ack, dict), f"{case}: {ack!r}"
        assert ack.get("ok") is False, f"{case}: {ack}"
        assert set(ack) == {"ok", "error"}, f"{case}: {ack}"
        assert ack["error"]["code"] == code, f"{case}: {ack}"
        assert isinstance(ack["error"]["message"], str) and ack["error"]["message"], case
        await self.assert_usable(case)

    async def pending(self) -> list[dict[str, Any]]:
        ack = await self.call("sync", {})
        assert ack["ok"] is True, ack
        return list(ack["envelopes"])

    async def close(self) -> None:
        await close_socket_client(self.sio)


async def refused(url: str, auth: Any) -> dict[str, Any]:
    """Connect with ``auth``; assert the server refuses; return its reason."""
    sock = Sock()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sock.connect(url, auth)
    await sock.close()
    assert isinstance(sock.refusal, dict), sock.refusal
    return sock.refusal


def refusal_code(reason: dict[str, Any]) -> str:
    assert isinstance(reason.get("message"), str) and reason["message"], reason
    return str(reason["data"]["code"])


# -- a small world: alice, bob and carol, registered and connected ------------------


@dataclass
class World:
    server: RunningServer
    http: httpx.AsyncClient
    alice: Dev
    bob: Dev
    carol: Dev
    tokens: dict[str, str]
    socks: dict[str, Sock]


@pytest.fixture
async def world(server: RunningServer) -> AsyncIterator[World]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        devs = {name: Dev.new(name) for name in ("alice", "bob", "carol")}
        tokens: dict[str, str] = {}
        socks: dict[str, Sock] = {}
        try:
            for name, dev in devs.items():
                await register(http, dev)
                tokens[name] = await login(http, dev)
                socks[name] = Sock()
                await socks[name].connect(server.url, {"token": tokens[name]})
            yield World(server, http, devs["alice"], devs["bob"], devs["carol"], tokens, socks)
        finally:
            for sock in socks.values():
                await sock.close()


async def assert_alice_to_bob(w: World) -> None:
    """A normal message still goes through: stored, pushed, synced and acked."""
    body = b64encode(os.urandom(24))
    sent = await w.socks["alice"].call(
        "send",
        {"client_message_id": secrets.token_urlsafe(12), "envelopes": [w.bob.envelope(body)]},
    )
    assert sent["ok"] is True, sent
    async with asyncio.timeout(5):
        while True:
            pushed = await w.socks["bob"].pushed.get()
            if pushed["body"] == body:
                break
    assert pushed["sender"] == "alice"
    assert pushed["sender_device"] == w.alice.device_id
    assert pushed["id"] in [e["id"] for e in await w.socks["bob"].pending()]
    acked = await w.socks["bob"].call("ack", {"ids": [pushed["id"]]})
    assert acked == {"ok": True, "deleted": 1}


# =====================================================================================
# HTTP
# =====================================================================================

POST_ENDPOINTS = [
    ("/v1/accounts", False),
    ("/v1/auth/challenge", False),
    ("/v1/auth/token", False),
    ("/v1/keys/upload", True),
    ("/v1/keys/claim", True),
]

NOT_JSON: list[tuple[str, bytes]] = [
    ("empty body", b""),
    ("plain text", b"hello"),
    ("truncated object", b'{"username": "alice"'),
    ("invalid UTF-8", b"\xff\xfe\xfd\x00"),
    ("form encoding", b"username=alice&device_id=ABCD"),
    ("deeply nested arrays", b"[" * 100_000 + b"]" * 100_000),
    ("deeply nested objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    ("integer over 4300 digits", b"1" * 5000),
    ("array", b"[]"),
    ("null", b"null"),
    ("string", b'"alice"'),
    ("number", b"42"),
    ("NaN", b"NaN"),
]


async def test_http_bodies_that_are_not_json_objects(world: World) -> None:
    for path, needs_auth in POST_ENDPOINTS:
        headers = {"authorization": f"Bearer {world.tokens['alice']}"} if needs_auth else {}
        for case, raw in NOT_JSON:
            resp = await world.http.post(path, content=raw, headers=headers)
            assert_error(resp, 400, "bad_request", f"{path} {case}")
    await assert_alice_to_bob(world)


async def test_http_bodies_over_the_size_limit(world: World) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the server must count as it reads.
        yield b'{"username": "'
        for _ in range(MAX_BODY // 65536 + 1):
            yield b"a" * 65536
        yield b'"}'

    for path, needs_auth in POST_ENDPOINTS:
        headers = {"authorization": f"Bearer {world.tokens['alice']}"} if needs_auth else {}
        big = b'{"username": "' + b"a" * MAX_BODY + b'"}'
        resp = await world.http.post(path, content=big, headers=headers)
        assert_error(resp, 413, "payload_too_large", f"{path} with Content-Length")
        resp = await world.http.post(path, content=chunks(), headers=headers)
        assert_error(resp, 413, "payload_too_large", f"{path} chunked")
    # Right at the limit is not "too large": the body is read and judged on its content.
    at_limit = b'{"username": "' + b"a" * (MAX_BODY - 16) + b'"}'
    assert len(at_limit) == MAX_BODY
    resp = await world.http.post("/v1/auth/challenge", content=at_limit)
    assert_error(resp, 400, "bad_request", "body of exactly max_body_bytes")
    await assert_alice_to_bob(world)


async def test_register_malformed_requests(world: World) -> None:
    dev = Dev.new("mallory")
    base = dev.register_body()
    e = functools.partial(edited, base)
    stranger = IdentityKey.generate()
    cases: list[tuple[str, Any]] = [
        ("missing username", e("username", DELETE)),
        ("missing device", e("device", DELETE)),
        ("missing device.signatures", e("device.signatures", DELETE)),
        ("missing device signature", e("device.signatures.device", DELETE)),
        ("missing curve25519", e("device.curve25519", DELETE)),
        ("missing key signature", e("one_time_keys.0.signature", DELETE)),
        ("empty object", {}),
        ("username is a number", e("username", 123)),
        ("username is null", e("username", None)),
        ("username is a list", e("username", ["mallory"])),
        ("device is a string", e("device", "mallory")),
        ("device is a list", e("device", [base["device"]])),
        ("device_id is a number", e("device.device_id", 1234)),
        ("one_time_keys is an object", e("one_time_keys", {})),
        ("one_time_keys holds a number", e("one_time_keys", [1])),
        ("fallback_key is a string", e("fallback_key", "key")),
        ("invite is a number", e("invite", 5)),
        ("invite is a bool", e("invite", True)),
        ("extra top-level field", e("admin", True)),
        ("extra device field", e("device.verified", True)),
        ("extra signature", e("device.signatures.server", stranger.sign(b"x"))),
        ("extra key field", e("one_time_keys.0.expires", 0)),
        ("curve25519 not base64", e("device.curve25519", "not a key!" * 4)),
        ("ed25519 one char too long", e("device.ed25519", dev.key.public_key + "A")),
        ("signature one char short", e("device.signatures.identity", "A" * 85)),
        ("device_id with bad chars", e("device.device_id", "DEV 1/..")),
        ("device_id too short", e("device.device_id", "D1")),
        ("device_id of 10k chars", e("device.device_id", "D" * 10_000)),
        ("key_id too long", e("one_time_keys.0.key_id", "k" * 65)),
        ("201 one-time keys", e("one_time_keys", [dev.signed_key() for _ in range(201)])),
        ("username of 10k chars", e("username", "m" * 10_000)),
        ("invite of 10k chars", e("invite", "x" * 10_000)),
        ("device.username is someone else", e("device.username", "alice")),
    ]
    for case, body in cases:
        assert_error(await post(world.http, "/v1/accounts", body), 400, "bad_request", case)

    others = Dev.new("mallory", dev.device_id).device_keys()["signatures"]
    forged = device_payload(
        username="mallory",
        device_id="OTHERDEV",
        curve25519=dev.curve25519,
        ed25519=dev.key.public_key,
        identity_key=dev.identity.public_key,
    )
    signed_for_other_id = edited(
        e("device.signatures.identity", dev.identity.sign(forged)),
        "device.signatures.device",
        dev.key.sign(forged),
    )
    signature_cases: list[tuple[str, Any]] = [
        ("identity signature by another key", e("device.signatures.identity", others["identity"])),
        ("device signature by another key", e("device.signatures.device", others["device"])),
        ("signatures made for another device id", signed_for_other_id),
        ("identity key swapped", e("device.identity_key", stranger.public_key)),
        ("curve25519 swapped after signing", e("device.curve25519", _curve_key())),
        ("one-time key by another key", e("one_time_keys.0", dev.signed_key(signer=stranger))),
        ("one-time key signed as fallback", e("one_time_keys.0", dev.signed_key(fallback=True))),
        ("fallback key signed as one-time", e("fallback_key", dev.signed_key())),
        ("one-time key altered after signing", e("one_time_keys.1.key", _curve_key())),
        ("garbage signature bytes", e("one_time_keys.2.signature", "A" * 86)),
    ]
    for case, body in signature_cases:
        assert_error(await post(world.http, "/v1/accounts", body), 400, "bad_signature", case)

    # Nothing of all that was stored...
    auth = {"authorization": f"Bearer {world.tokens['alice']}"}
    resp = await world.http.get("/v1/users/mallory/devices", headers=auth)
    assert_error(resp, 404, "unknown_user", "after refused registrations")
    # ...and the untouched request still registers.
    assert (await post(world.http, "/v1/accounts", base)).status_code == 200
    await assert_alice_to_bob(world)


INVALID_USERNAMES: list[tuple[str, str]] = [
    ("Alice", "invalid_username"),
    ("ALICE", "invalid_username"),
    ("ab", "invalid_username"),
    ("a", "invalid_username"),
    ("a" * 33, "invalid_username"),
    ("a" * 64, "invalid_username"),
    ("al ice", "invalid_username"),
    ("alice!", "invalid_username"),
    ("ali/ce", "invalid_username"),
    ("../etc", "invalid_username"),
    ("alicé", "invalid_username"),
    ("\u0430lice", "invalid_username"),  # Cyrillic a: a look-alike of "alice"
    ("ali\tce", "invalid_username"),
    ("mallory\n", "invalid_username"),  # "$" in a regex matches before a final newline
    ("\nmallory", "invalid_username"),
    ("", "bad_request"),
    ("a" * 65, "bad_request"),
    ("ali\x00ce", "bad_request"),
    ("ali\ud800ce", "bad_request"),  # a lone surrogate: not valid Unicode text
]


async def test_register_invalid_usernames(world: World) -> None:
    for name, code in INVALID_USERNAMES:
        try:
            body = Dev.new(name).register_body()  # signed for that very name
        except UnicodeEncodeError:  # a lone surrogate cannot even be signed
            body = edited(Dev.new("mallory").register_body(), "username", name)
            body = edited(body, "device.username", name)
        assert_error(await post(world.http, "/v1/accounts", body), 400, code, repr(name))
    await assert_alice_to_bob(world)


async def test_register_duplicates(world: World) -> None:
    http = world.http
    auth = {"authorization": f"Bearer {world.tokens['bob']}"}
    # Same username, new keys.
    assert_error(
        await post(http, "/v1/accounts", Dev.new("alice").register_body()), 409, "username_taken"
    )
    # Same username, same device id and keys (a replayed registration).
    replay = world.alice.register_body()
    assert_error(await post(http, "/v1/accounts", replay), 409, "username_taken", "replay")
    # A new user claiming bob's (public) Curve25519 key for its own device.
    squatter = Dev.new("mallory")
    squatter.curve25519 = world.bob.curve25519
    resp = await post(http, "/v1/accounts", squatter.register_body())
    assert_error(resp, 409, "device_exists", "curve25519 of another device")
    resp = await http.get("/v1/users/mallory/devices", headers=auth)
    assert_error(resp, 404, "unknown_user", "mallory must not exist half-made")

    # The same one-time key id twice in one registration is stored once, not a crash.
    dave = Dev.new("dave")
    body = dave.register_body(otks=0)
    body["one_time_keys"] = [dave.signed_key("dup"), dave.signed_key("dup"), dave.signed_key("k2")]
    assert (await post(http, "/v1/accounts", body)).status_code == 200
    resp = await http.get(
        "/v1/keys/count", headers={"authorization": f"Bearer {await login(http, dave)}"}
    )
    assert resp.json() == {"one_time_keys": 2, "fallback_key": True, "fallback_used": False}

    # alice is unchanged: one device, her original keys.
    listed = (await http.get("/v1/users/alice/devices", headers=auth)).json()
    assert listed["identity_key"] == world.alice.identity.public_key
    assert [d["device_id"] for d in listed["devices"]] == [world.alice.device_id]
    await login(http, world.alice)
    await assert_alice_to_bob(world)


async def test_invite_only_registration(server_factory: ServerFactory) -> None:
    server = await server_factory(invite_only=True)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        dev = Dev.new("alice")
        resp = await post(http, "/v1/accounts", dev.register_body())
        assert_error(resp, 403, "invite_required", "no invite")
        resp = await post(http, "/v1/accounts", dev.register_body(invite=""))
        assert_error(resp, 403, "invite_required", "empty invite")
        resp = await post(http, "/v1/accounts", dev.register_body(invite="not-a-real-code"))
        assert_error(resp, 403, "invalid_invite", "made-up invite")
        resp = await post(http, "/v1/accounts", dev.register_body(invite="x" * 129))
        assert_error(resp, 400, "bad_request", "invite too long")
        resp = await post(http, "/v1/accounts", edited(dev.register_body(), "invite", 123456))
        assert_error(resp, 400, "bad_request", "invite of the wrong type")

        code = await server.services.accounts.create_invite()
        # A bad signature must not spend the invite.
        body = edited(dev.register_body(invite=code), "one_time_keys.0.key", _curve_key())
        assert_error(await post(http, "/v1/accounts", body), 400, "bad_signature")
        await register(http, dev, invite=code)
        resp = await post(http, "/v1/accounts", Dev.new("bob").register_body(invite=code))
        assert_error(resp, 403, "invalid_invite", "invite used twice")

        # A fresh invite with a taken username is refused and stays unspent.
        code2 = await server.services.accounts.create_invite()
        resp = await post(http, "/v1/accounts", Dev.new("alice").register_body(invite=code2))
        assert_error(resp, 409, "username_taken", "taken name with a good invite")
        await register(http, Dev.new("bob"), invite=code2)
        assert await login(http, dev)


async def test_challenge_malformed_requests(world: World) -> None:
    alice_dev, bob_dev = world.alice.device_id, world.bob.device_id

    def ref(username: Any, device_id: Any) -> dict[str, Any]:
        return {"username": username, "device_id": device_id}

    bad_requests: list[tuple[str, Any]] = [
        ("empty object", {}),
        ("not an object", [ref("alice", alice_dev)]),
        ("missing device_id", {"username": "alice"}),
        ("missing username", {"device_id": alice_dev}),
        ("username is a number", ref(1, "ABCD")),
        ("device_id is a list", ref("alice", ["ABCD"])),
        ("extra field", {**ref("alice", alice_dev), "ttl": 10**9}),
        ("device_id with bad chars", ref("alice", "A B!")),
        ("username of 10k chars", ref("a" * 10_000, "ABCD")),
        ("NUL in username", ref("ali\x00ce", "ABCD")),
    ]
    for case, body in bad_requests:
        assert_error(await post(world.http, "/v1/auth/challenge", body), 400, "bad_request", case)
    unknown: list[tuple[str, Any]] = [
        ("unknown user", ref("nobody", "ABCD")),
        ("unknown device", ref("alice", "NOSUCHDEV")),
        ("uppercase username", ref("ALICE", alice_dev)),
        ("bob's device under alice", ref("alice", bob_dev)),
    ]
    for case, body in unknown:
        resp = await post(world.http, "/v1/auth/challenge", body)
        assert_error(resp, 404, "unknown_device", case)
    await assert_alice_to_bob(world)


async def test_token_bad_signatures_and_challenges(world: World) -> None:
    http, alice, bob = world.http, world.alice, world.bob

    async def token(body: Any) -> httpx.Response:
        return await post(http, "/v1/auth/token", body)

    chal = await challenge(http, alice)
    # Signed by the wrong key, or over the wrong thing: refused, challenge not spent.
    assert_error(await token(token_request(alice, chal, signer=bob.key)), 400, "bad_signature")
    assert_error(
        await token(token_request(alice, chal, signer=alice.identity)), 400, "bad_signature"
    )
    wrong_payload = token_request(alice, chal)
    wrong_payload["signature"] = alice.key.sign(
        auth_payload(challenge=chal, username="alice", device_id=bob.device_id)
    )
    assert_error(await token(wrong_payload), 400, "bad_signature", "payload for another device")
    other = token_request(alice, await challenge(http, alice))
    resp = await token({**other, "challenge": chal})
    assert_error(resp, 400, "bad_signature", "signature of another challenge")
    assert_error(await token({**other, "signature": "A" * 86}), 400, "bad_signature")
    # Malformed requests.
    malformed: list[tuple[str, Any]] = [
        ("signature too short", {**other, "signature": "A" * 85}),
        ("signature not base64", {**other, "signature": "!" * 86}),
        ("signature is a number", {**other, "signature": 1}),
        ("challenge of 129 chars", {**other, "challenge": "c" * 129}),
        ("challenge is null", {**other, "challenge": None}),
        ("missing challenge", edited(other, "challenge", DELETE)),
        ("extra field", {**other, "ttl": 1}),
        ("not an object", [other]),
        ("NUL in challenge", token_request(alice, "abc\x00def")),
    ]
    for case, body in malformed:
        assert_error(await token(body), 400, "bad_request", case)
    unknown = token_request(Dev.new("nobody", alice.device_id), chal)
    assert_error(await token(unknown), 404, "unknown_device", "unknown user")

    # The challenge survived every refused attempt; it works exactly once.
    assert (await token(token_request(alice, chal))).status_code == 200
    assert_error(await token(token_request(alice, chal)), 401, "unauthorized", "reused challenge")
    # A challenge issued to bob cannot be answered by alice, even with a valid signature.
    bobs = await challenge(http, bob)
    assert_error(await token(token_request(alice, bobs)), 401, "unauthorized", "bob's challenge")
    assert (await token(token_request(bob, bobs))).status_code == 200, "not spent by alice"
    # A challenge the server never issued.
    made_up = secrets.token_urlsafe(32)
    assert_error(await token(token_request(alice, made_up)), 401, "unauthorized", "made up")
    await assert_alice_to_bob(world)


async def test_expired_challenge(server_factory: ServerFactory) -> None:
    server = await server_factory(challenge_ttl_s=-1)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        dev = Dev.new("alice")
        await register(http, dev)
        resp = await post(http, "/v1/auth/token", token_request(dev, await challenge(http, dev)))
        assert_error(resp, 401, "unauthorized", "expired challenge")


AUTH_ENDPOINTS = [
    ("POST", "/v1/keys/upload", {"one_time_keys": []}),
    ("GET", "/v1/keys/count", None),
    ("POST", "/v1/keys/claim", {"devices": [{"username": "bob", "device_id": "ABCD"}]}),
    ("GET", "/v1/users/bob/devices", None),
]


async def test_http_authentication(world: World) -> None:
    bad_headers: list[tuple[str, dict[str, str]]] = [
        ("no header", {}),
        ("empty header", {"authorization": ""}),
        ("scheme only", {"authorization": "Bearer"}),
        ("basic auth", {"authorization": "Basic YWxpY2U6cGFzc3dvcmQ="}),
        ("token without scheme", {"authorization": world.tokens["alice"]}),
        ("short token", {"authorization": "Bearer abc"}),
        ("unknown token", {"authorization": "Bearer " + secrets.token_urlsafe(32)}),
        ("token of 10k chars", {"authorization": "Bearer " + "x" * 10_000}),
        ("token altered", {"authorization": "Bearer " + world.tokens["alice"][:-1] + "?"}),
    ]
    for method, path, body in AUTH_ENDPOINTS:
        for case, headers in bad_headers:
            resp = await world.http.request(method, path, json=body, headers=headers)
            assert_error(resp, 401, "unauthorized", f"{method} {path} {case}")
        ok = await world.http.request(
            method, path, json=body, headers={"authorization": f"bearer {world.tokens['alice']}"}
        )
        assert ok.status_code == 200, f"{method} {path}: {ok.text}"
    await assert_alice_to_bob(world)


async def test_expired_token(server_factory: ServerFactory) -> None:
    server = await server_factory(token_ttl_s=-1)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        dev = Dev.new("alice")
        await register(http, dev)
        token = await login(http, dev)
        for method, path, body in AUTH_ENDPOINTS:
            resp = await http.request(
                method, path, json=body, headers={"authorization": f"Bearer {token}"}
            )
            assert_error(resp, 401, "token_expired", f"{method} {path}")
        assert refusal_code(await refused(server.url, {"token": token})) == "token_expired"


def otks(*keys: Any) -> dict[str, Any]:
    return {"one_time_keys": list(keys)}


async def test_keys_upload_bad_input(world: World) -> None:
    http, token = world.http, world.tokens["alice"]
    auth = {"authorization": f"Bearer {token}"}
    before = (await http.get("/v1/keys/count", headers=auth)).json()
    sk, stranger = world.alice.signed_key, IdentityKey.generate()
    good = sk()
    bad_signatures: list[tuple[str, Any]] = [
        ("key signed by another device", otks(sk(signer=stranger))),
        ("one-time key signed as fallback", otks(sk(fallback=True))),
        ("fallback key signed as one-time", {"fallback_key": sk()}),
        ("key altered after signing", otks({**good, "key": _curve_key()})),
        ("key id altered after signing", otks({**good, "key_id": "other"})),
        ("good keys, then one bad", otks(sk(), sk(), {**good, "signature": "A" * 86})),
    ]
    for case, body in bad_signatures:
        assert_error(await post(http, "/v1/keys/upload", body, token), 400, "bad_signature", case)
    bad_requests: list[tuple[str, Any]] = [
        ("201 keys", otks(*(sk() for _ in range(201)))),
        ("keys is an object", {"one_time_keys": {"a": good}}),
        ("key is a string", otks("key")),
        ("fallback is a list", {"fallback_key": [good]}),
        ("extra field", {**otks(good), "device_id": "OTHER"}),
        ("extra key field", otks({**good, "fallback": True})),
        ("missing signature", otks(edited(good, "signature", DELETE))),
        ("malformed key", otks({**good, "key": "short"})),
        ("key id with bad chars", otks({**good, "key_id": "a b"})),
        ("key id of 10k chars", otks({**good, "key_id": "k" * 10_000})),
    ]
    for case, body in bad_requests:
        assert_error(await post(http, "/v1/keys/upload", body, token), 400, "bad_request", case)
    after = (await http.get("/v1/keys/count", headers=auth)).json()
    assert after == before, "a refused upload stored keys"
    resp = await post(http, "/v1/keys/upload", otks(good), token)
    assert resp.json() == {
        "one_time_keys": before["one_time_keys"] + 1,
        "fallback_key": True,
        "fallback_used": False,
    }
    await assert_alice_to_bob(world)


async def test_keys_claim_bad_input(world: World) -> None:
    token = world.tokens["alice"]
    bob = world.bob.ref()
    cases: list[tuple[str, Any]] = [
        ("empty list", {"devices": []}),
        ("1001 devices", {"devices": [bob] * 1001}),
        ("missing devices", {}),
        ("devices is an object", {"devices": bob}),
        ("device is a string", {"devices": ["bob"]}),
        ("missing device_id", {"devices": [{"username": "bob"}]}),
        ("device_id is a number", {"devices": [{"username": "bob", "device_id": 1234}]}),
        ("device_id with bad chars", {"devices": [{"username": "bob", "device_id": "../x"}]}),
        ("extra field", {"devices": [bob], "count": 100}),
        ("extra ref field", {"devices": [{**bob, "all": True}]}),
        ("username of 10k chars", {"devices": [{"username": "b" * 10_000, "device_id": "ABCD"}]}),
        ("NUL in username", {"devices": [{"username": "bob\x00", "device_id": "ABCD"}]}),
    ]
    for case, body in cases:
        resp = await post(world.http, "/v1/keys/claim", body, token)
        assert_error(resp, 400, "bad_request", case)

    # Unknown users and devices are reported missing, not refused.
    unknown = [
        {"username": "nobody", "device_id": "ABCD"},
        {"username": "bob", "device_id": "NOSUCHDEV"},
        {"username": "BOB", "device_id": world.bob.device_id},
        {"username": "bob", "device_id": world.carol.device_id},
    ]
    resp = await post(world.http, "/v1/keys/claim", {"devices": [*unknown, bob]}, token)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["missing"] == unknown
    assert [k["device_id"] for k in answer["keys"]] == [world.bob.device_id]
    # The largest request allowed, all unknown: answered, and quickly.
    many = [{"username": f"user{i}", "device_id": f"DEV{i:05d}"} for i in range(1000)]
    resp = await post(world.http, "/v1/keys/claim", {"devices": many}, token)
    assert resp.status_code == 200 and len(resp.json()["missing"]) == 1000
    await assert_alice_to_bob(world)


async def test_user_devices_bad_input(world: World) -> None:
    auth = {"authorization": f"Bearer {world.tokens['alice']}"}
    cases: list[tuple[str, int, str]] = [
        ("nobody", 404, "unknown_user"),
        ("BOB", 404, "unknown_user"),
        ("bob%0A", 404, "unknown_user"),
        ("bob%00", 404, "unknown_user"),
        ("%00", 404, "unknown_user"),
        ("%ED%A0%80", 404, "unknown_user"),  # an encoded lone surrogate
        ("%FF%FE", 404, "unknown_user"),
        ("%2E%2E", 404, "unknown_user"),
        ("b" * 65, 400, "bad_request"),
        ("b" * 5000, 400, "bad_request"),
    ]
    for name, status, code in cases:
        resp = await world.http.get(f"/v1/users/{name}/devices", headers=auth)
        assert_error(resp, status, code, name[:20])
    resp = await world.http.get("/v1/users/bob/devices", headers=auth)
    assert resp.status_code == 200
    assert resp.json()["devices"][0]["curve25519"] == world.bob.curve25519
    await assert_alice_to_bob(world)


async def test_health_openapi_and_unknown_routes(world: World) -> None:
    http = world.http
    resp = await http.get("/v1/health", params={"x": "y" * 1000})
    assert resp.status_code == 200 and resp.json()["status"] == "ok"
    spec = (await http.get("/v1/openapi.json")).json()
    assert {"/v1/accounts", "/v1/auth/token", "/v1/users/{username}/devices"} <= set(spec["paths"])
    for method, path in [
        ("POST", "/v1/health"),
        ("DELETE", "/v1/openapi.json"),
        ("GET", "/v1/accounts"),
        ("PUT", "/v1/keys/upload"),
        ("POST", "/v1/users/bob/devices"),
    ]:
        assert_error(await http.request(method, path), 405, "bad_request", f"{method} {path}")
    for path in ["/", "/v1", "/v2/health", "/v1/users/bob", "/v1/users/a/b/devices", "/x" * 500]:
        assert_error(await http.get(path), 404, "not_found", path[:20])
    await assert_alice_to_bob(world)


# =====================================================================================
# Socket.IO
# =====================================================================================


async def test_socket_connect_refused(world: World) -> None:
    url = world.server.url
    cases: list[tuple[str, Any]] = [
        ("no auth", None),
        ("empty auth", {}),
        ("auth is a string", "let me in"),
        ("auth is a list", [world.tokens["alice"]]),
        ("token is null", {"token": None}),
        ("token is a number", {"token": 12345678901234567890}),
        ("token is an object", {"token": {"token": world.tokens["alice"]}}),
        ("short token", {"token": "abc"}),
        ("unknown token", {"token": secrets.token_urlsafe(32)}),
        ("token of 100k chars", {"token": "x" * 100_000}),
        ("token in another key", {"access_token": world.tokens["alice"]}),
    ]
    for case, auth in cases:
        assert refusal_code(await refused(url, auth)) == "unauthorized", case
    # The refusals cost nothing: a good token still connects and works.
    sock = Sock()
    await sock.connect(url, {"token": world.tokens["alice"], "extra": "ignored"})
    await sock.assert_usable()
    await sock.close()
    await assert_alice_to_bob(world)


async def test_socket_send_bad_input(world: World) -> None:
    sock, carol = world.socks["alice"], world.carol
    ok_env = world.bob.envelope()

    def send(**fields: Any) -> dict[str, Any]:
        return {"client_message_id": secrets.token_urlsafe(12), "envelopes": [ok_env], **fields}

    def env(**fields: Any) -> dict[str, Any]:
        return send(envelopes=[{**ok_env, **fields}])

    bad_requests: list[tuple[str, Any]] = [
        ("no payload", None),
        ("payload is a string", "hello"),
        ("payload is a number", 7),
        ("payload is a list", [send()]),
        ("payload is bytes", b"\x00\x01binary"),
        ("empty object", {}),
        ("missing client_message_id", {"envelopes": [ok_env]}),
        ("missing envelopes", {"client_message_id": "abcdefgh"}),
        ("no envelopes", send(envelopes=[])),
        ("1001 envelopes", send(envelopes=[ok_env] * 1001)),
        ("envelopes is an object", send(envelopes=ok_env)),
        ("envelope is a string", send(envelopes=["bob"])),
        ("extra field", send(priority="high")),
        ("extra envelope field", env(sender="carol")),
        ("protocol version 2", send(v=2)),
        ("type 2", env(type=2)),
        ("type as a string", env(type="1")),
        ("kind megolm", env(kind="megolm")),
        ("missing body", send(envelopes=[edited(ok_env, "body", DELETE)])),
        ("empty body", env(body="")),
        ("body as bytes", env(body=b"ciphertext")),
        ("body as a number", env(body=1)),
        ("body over 256 KiB", env(body="A" * (256 * 1024 + 1))),
        ("NUL in body", env(body="abc\x00def")),
        ("lone surrogate in body", env(body="abc\udc00")),
        ("client_message_id too short", send(client_message_id="abc")),
        ("client_message_id too long", send(client_message_id="a" * 65)),
        ("client_message_id with bad chars", send(client_message_id="abc def ghi")),
        ("client_message_id is a number", send(client_message_id=12345678)),
        ("device_id with bad chars", env(device_id="../../x")),
        ("username of 10k chars", env(username="b" * 10_000)),
        ("NUL in username", env(username="bob\x00")),
        ("the same device twice", send(envelopes=[ok_env, {**ok_env, "body": "QQ"}])),
    ]
    for case, payload in bad_requests:
        await sock.expect_error("send", payload, "bad_request", case)
    await sock.expect_error("send", (send(), send()), "bad_request", "two payloads")

    unknown_devices: list[tuple[str, Any]] = [
        ("unknown user", env(username="nobody")),
        ("unknown device of bob", env(device_id="NOSUCHDEV")),
        ("uppercase username", env(username="BOB")),
        ("carol's device id under bob", env(device_id=carol.device_id)),
        ("bob's device id under carol", env(username="carol")),
        ("bob, then an unknown device", send(envelopes=[ok_env, {**ok_env, "username": "x"}])),
    ]
    for case, payload in unknown_devices:
        await sock.expect_error("send", payload, "unknown_device", case)

    # Nothing of it was stored or pushed, for bob or for carol.
    assert await world.socks["bob"].pending() == []
    assert await world.socks["carol"].pending() == []
    assert world.socks["bob"].pushed.empty() and world.socks["carol"].pushed.empty()
    await assert_alice_to_bob(world)


async def test_envelope_to_a_device_of_another_user(world: World) -> None:
    """Addressing carol's device id under bob's name must reach nobody."""
    alice, bob, carol = world.socks["alice"], world.socks["bob"], world.socks["carol"]
    for target in (
        {**world.bob.envelope(), "device_id": world.carol.device_id},
        {**world.carol.envelope(), "device_id": world.bob.device_id},
        {**world.bob.envelope(), "device_id": world.alice.device_id},
    ):
        payload = {"client_message_id": secrets.token_urlsafe(12), "envelopes": [target]}
        await alice.expect_error("send", payload, "unknown_device", str(target))
    await asyncio.sleep(0.1)  # a wrongly pushed envelope would have arrived by now
    assert bob.pushed.empty() and carol.pushed.empty()
    assert await bob.pending() == [] and await carol.pending() == []
    assert await alice.pending() == []
    await assert_alice_to_bob(world)


async def test_socket_sync_bad_input(world: World) -> None:
    sock = world.socks["alice"]
    cases: list[tuple[str, Any]] = [
        ("payload is a string", "0"),
        ("payload is a list", [0]),
        ("after negative", {"after": -1}),
        ("after as a string", {"after": "0"}),
        ("after as a float", {"after": 1.5}),
        ("after as a bool", {"after": True}),
        ("after over 64 bits", {"after": 2**63}),
        ("after of 30 digits", {"after": 10**30}),
        ("limit zero", {"limit": 0}),
        ("limit over 500", {"limit": 501}),
        ("limit huge", {"limit": 2**70}),
        ("extra field", {"after": 0, "device_id": world.bob.device_id}),
    ]
    for case, payload in cases:
        await sock.expect_error("sync", payload, "bad_request", case)
    for payload in (None, {}, {"after": 2**63 - 1, "limit": 500}):
        ack = await sock.call("sync", payload)
        assert ack == {"ok": True, "envelopes": [], "more": False}, payload
    await assert_alice_to_bob(world)


async def test_socket_ack_bad_input(world: World) -> None:
    sock = world.socks["bob"]
    cases: list[tuple[str, Any]] = [
        ("no payload", None),
        ("payload is a list", [1]),
        ("empty object", {}),
        ("no ids", {"ids": []}),
        ("id zero", {"ids": [0]}),
        ("negative id", {"ids": [-1]}),
        ("id as a string", {"ids": ["1"]}),
        ("id as a float", {"ids": [1.0]}),
        ("id over 64 bits", {"ids": [2**63]}),
        ("id of 30 digits", {"ids": [10**30]}),
        ("1001 ids", {"ids": list(range(1, 1002))}),
        ("ids is a number", {"ids": 1}),
        ("extra field", {"ids": [1], "all": True}),
    ]
    for case, payload in cases:
        await sock.expect_error("ack", payload, "bad_request", case)
    # Ids that do not exist are simply not there to delete.
    ack = await sock.call("ack", {"ids": [999_999, 2**63 - 1]})
    assert ack == {"ok": True, "deleted": 0}
    await assert_alice_to_bob(world)


async def test_ack_of_another_devices_envelope(world: World) -> None:
    alice, bob, carol = world.socks["alice"], world.socks["bob"], world.socks["carol"]
    for_bob = b64encode(b"for bob")
    for_carol = b64encode(b"for carol")
    envelopes = [world.bob.envelope(for_bob), world.carol.envelope(for_carol)]
    sent = await alice.call(
        "send", {"client_message_id": secrets.token_urlsafe(12), "envelopes": envelopes}
    )
    assert sent["ok"] is True, sent
    [bobs] = await bob.pending()
    [carols] = await carol.pending()
    assert bobs["body"] == for_bob and carols["body"] == for_carol

    # Another device's id is passed over, answered as an id that is not there
    # (test_authorization: the answer must not tell whether bob has synced).
    nothing = {"ok": True, "deleted": 0}
    assert await carol.call("ack", {"ids": [bobs["id"]]}) == nothing, "carol acks bob's"
    assert await alice.call("ack", {"ids": [bobs["id"]]}) == nothing, "sender acks it"
    assert [e["id"] for e in await bob.pending()] == [bobs["id"]]
    # Mixed with one's own: only the own one goes.
    mixed = {"ids": [carols["id"], bobs["id"]]}
    assert await carol.call("ack", mixed) == {"ok": True, "deleted": 1}, "own and foreign mixed"
    assert await carol.pending() == []
    assert [e["id"] for e in await bob.pending()] == [bobs["id"]]
    # The real recipient can still fetch and acknowledge it.
    assert await bob.call("ack", {"ids": [bobs["id"]]}) == {"ok": True, "deleted": 1}
    assert await bob.pending() == []
    await assert_alice_to_bob(world)


async def test_socket_key_events_bad_input(world: World) -> None:
    sock, sk = world.socks["alice"], world.alice.signed_key
    before = await sock.call("keys_count")
    assert before["ok"] is True
    upload_cases: list[tuple[str, Any, str]] = [
        ("no payload", None, "bad_request"),
        ("payload is a string", "keys", "bad_request"),
        ("201 keys", otks(*(sk() for _ in range(201))), "bad_request"),
        ("extra field", {**otks(), "device_id": world.bob.device_id}, "bad_request"),
        ("key is a number", otks(1), "bad_request"),
        ("signed by another key", otks(sk(signer=IdentityKey.generate())), "bad_signature"),
        ("fallback signed as one-time", {"fallback_key": sk()}, "bad_signature"),
    ]
    for case, payload, code in upload_cases:
        await sock.expect_error("keys_upload", payload, code, case)
    # keys_count takes no payload; whatever is sent along is ignored.
    for junk in (None, "x", [1, 2], {"device_id": world.bob.device_id}):
        assert await sock.call("keys_count", junk) == before, junk

    claim_cases: list[tuple[str, Any]] = [
        ("no payload", None),
        ("payload is a list", [world.bob.ref()]),
        ("empty list", {"devices": []}),
        ("1001 devices", {"devices": [world.bob.ref()] * 1001}),
        ("device is a string", {"devices": ["bob"]}),
        ("extra field", {"devices": [world.bob.ref()], "n": 5}),
    ]
    for case, payload in claim_cases:
        await sock.expect_error("keys_claim", payload, "bad_request", case)
    ghost = {"username": "nobody", "device_id": "ABCD"}
    ack = await sock.call("keys_claim", {"devices": [ghost]})
    assert ack == {"ok": True, "keys": [], "missing": [ghost]}

    devices_cases: list[tuple[str, Any, str]] = [
        ("no payload", None, "bad_request"),
        ("payload is a string", "bob", "bad_request"),
        ("empty object", {}, "bad_request"),
        ("username is a number", {"username": 5}, "bad_request"),
        ("username is a list", {"username": ["bob"]}, "bad_request"),
        ("empty username", {"username": ""}, "bad_request"),
        ("username of 65 chars", {"username": "b" * 65}, "bad_request"),
        ("username of 100k chars", {"username": "b" * 100_000}, "bad_request"),
        ("unknown user", {"username": "nobody"}, "unknown_user"),
        ("uppercase username", {"username": "BOB"}, "unknown_user"),
        ("NUL in username", {"username": "bob\x00"}, "unknown_user"),
        ("lone surrogate in username", {"username": "bob\ud800"}, "unknown_user"),
        ("trailing newline", {"username": "bob\n"}, "unknown_user"),
    ]
    for case, payload, code in devices_cases:
        await sock.expect_error("devices", payload, code, case)
    listed = await sock.call("devices", {"username": "bob"})
    assert listed["ok"] is True and listed["devices"][0]["device_id"] == world.bob.device_id
    assert await sock.call("keys_count") == before, "a refused upload stored keys"
    await assert_alice_to_bob(world)


async def test_socket_unknown_and_reserved_events(world: World) -> None:
    sock = world.socks["bob"]
    for event in ("nope", "SEND", "send ", "", "x" * 10_000, "envelope", "keys_low", "message"):
        await sock.expect_error(event, {}, "unknown_event", repr(event[:20]))
    # The connection lifecycle is not an event a client may fire.
    for event in ("connect", "disconnect"):
        await sock.expect_error(event, {"token": world.tokens["carol"]}, "unknown_event", event)
        await sock.expect_error(event, None, "unknown_event", event)
    # Event names that are not strings at all.
    for event in (123, None, ["send"], {"event": "send"}):
        await sock.expect_error(event, {}, "bad_request", repr(event))
    # Still bob, still receiving pushes.
    await assert_alice_to_bob(world)


async def test_socket_packets_that_do_not_decode(world: World) -> None:
    """Garbage below the event layer is dropped; the connection carries on."""
    sock = world.socks["bob"]
    for raw in [
        "2",  # an event with no data
        "2[]",  # an event without a name
        "21[]",  # ... that asks for an ack
        "2{}",
        '2"send"',
        "2[123]",
        '2["send"',  # truncated JSON
        "2" + "[" * 100_000 + "]" * 100_000,  # nested past the recursion limit
        "9[]",  # no such packet type
        "4[]",  # CONNECT_ERROR, which only servers send
    ]:
        await sock.sio.eio.send(raw)
        await sock.assert_usable(repr(raw[:20]))
        assert sock.sio.connected, repr(raw[:20])
    await assert_alice_to_bob(world)


@pytest.mark.parametrize("size", [MAX_BODY, 5 * MAX_BODY], ids=["engineio", "websocket"])
async def test_socket_packet_over_the_size_limit(world: World, size: int) -> None:
    """A packet over max_body_bytes ends that connection, nothing more: engine.io's
    limit, or the websocket layer's (4x, in bytes) before the frame is buffered.

    There is no error code to give: the server refuses to read the packet at all,
    so it never learns the event or its ack id. The client reconnects.
    """
    sock = world.socks["alice"]
    huge = {**world.bob.envelope(), "padding": "A" * size}
    await sock.sio.emit("send", {"client_message_id": "oversized", "envelopes": [huge]})
    async with asyncio.timeout(5):
        while sock.sio.connected:
            await asyncio.sleep(0.02)
    await sock.close()
    assert await world.socks["bob"].pending() == []
    # The same token connects again, and everyone else was never affected.
    again = world.socks["alice"] = Sock()
    await again.connect(world.server.url, {"token": world.tokens["alice"]})
    await again.assert_usable()
    await assert_alice_to_bob(world)


# =====================================================================================
# The real SDK, after an attack
# =====================================================================================


async def test_real_clients_chat_after_hostile_input(
    server: RunningServer, make_client: ClientFactory
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        mallory = Dev.new("mallory")
        await register(http, mallory)
        token = await login(http, mallory)
        for _, raw in NOT_JSON:
            await http.post("/v1/accounts", content=raw)
        await http.post("/v1/accounts", content=b"x" * (MAX_BODY + 1))
        sock = Sock()
        await sock.connect(server.url, {"token": token})
        try:
            await sock.expect_error("sync", {"after": 10**30}, "bad_request")
            await sock.expect_error("ack", {"ids": [2**64]}, "bad_request")
            await sock.expect_error("disconnect", None, "unknown_event")
            await sock.expect_error("devices", {"username": "alice\x00"}, "unknown_user")
            for raw in ("2[]", "2" + "[" * 100_000):
                await sock.sio.eio.send(raw)
            await sock.assert_usable()

            alice = await make_client("alice")
            bob = await make_client("bob")
            inbox = bob.subscribe()
            sent = await alice.send_text("bob", "hello bob")
            assert (await alice.wait_sent(sent.id, timeout=10)).state == "sent"
            event = await next_event(inbox, MessageReceived)
            assert event.message.body == "hello bob"
            assert event.message.sender == "alice"
        finally:
            await sock.close()
