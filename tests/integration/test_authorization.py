"""Authorization matrix: every socket event and HTTP endpoint, called by a stranger.

Two callers for each: an unauthenticated client, and a device of another user
(mallory's or carol's, against alice's and bob's things). Each is refused with a
clear code and the victim's data is left as it was, or (where the table says
"own") the call can only ever act on the caller's own data, or (where it says
"public") it is open to any signed-in device by design (key directory, device
lists). The tables must name every event and route the server has: a new one
without a row fails here.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import pytest

from bisik.crypto import IdentityKey, b64encode, backup_auth_payload
from bisik.server.rest._routes import _API
from tests.conftest import RunningServer
from tests.integration.test_bad_input import (
    Dev,
    World,
    assert_error,
    post,
    refusal_code,
    refused,
)
from tests.integration.test_bad_input import world as bad_input_world


@pytest.fixture
async def world(server: RunningServer) -> AsyncIterator[World]:
    """The same alice, bob and carol as in test_bad_input, registered and connected."""
    async for built in bad_input_world.__wrapped__(server):
        yield built


# Socket events: how a stranger's call is answered.
EVENTS = {
    "send": "own: sender is the connection's device; to unknown devices refused",
    "send_many": "own: as send, per message",
    "sync": "own: only the caller's queue",
    "ack": "own: only the caller's queue; other ids are passed over, answered alike",
    "keys_upload": "refused: bad_signature for another device's keys",
    "keys_count": "own",
    "keys_claim": "public: the key directory",
    "devices": "public: signed device lists",
    "devices_watch": "public: device-list changes",
    "presence": "refused: not_in_conversation",
    "settings": "own",
    "push_subscribe": "own",
    "push_unsubscribe": "own",
    "push_key": "public: the server's VAPID key",
    "group_create": "own: the caller becomes admin",
    "group_list": "own: the caller's groups",
    "group_info": "refused: not_a_member",
    "group_add": "refused: not_a_member / not_an_admin",
    "group_remove": "refused: not_a_member / not_an_admin",
    "group_promote": "refused: not_a_member / not_an_admin",
    "group_leave": "refused: not_a_member",
    "group_send": "refused: not_a_member",
    "group_device": "refused: not_a_member",
}

# HTTP routes that take no bearer token, and what guards them instead.
OPEN_ROUTES = {
    ("GET", "/v1/health"): "public",
    ("POST", "/v1/accounts"): "registration (invite if invite-only)",
    ("POST", "/v1/auth/challenge"): "challenge for a device; token needs its signature",
    ("POST", "/v1/auth/token"): "device signature",
    ("POST", "/v1/devices"): "identity signature + grant of that account or recovery proof",
    ("POST", "/v1/rendezvous"): "opens a new channel",
    ("POST", "/v1/rendezvous/{channel}/claim"): "single claim",
    ("POST", "/v1/rendezvous/{channel}/write"): "role token",
    ("POST", "/v1/rendezvous/{channel}/read"): "role token",
    ("POST", "/v1/rendezvous/{channel}/close"): "role token",
    ("POST", "/v1/backup/challenge"): "challenge; fetch needs the recovery key",
    ("POST", "/v1/backup/fetch"): "recovery-key signature",
}


def test_the_tables_name_every_event_and_route(world: World) -> None:
    handlers = world.server.app.other_asgi_app.state.namespace._handlers
    assert set(EVENTS) == set(handlers), set(EVENTS) ^ set(handlers)
    for method, path, _fn, _req, _resp, auth in _API:
        assert auth or (method, path) in OPEN_ROUTES, f"{method} {path}: who may call it?"


# -- unauthenticated ---------------------------------------------------------------


@pytest.mark.parametrize("route", [r[:2] for r in _API if r[5]], ids=lambda r: f"{r[0]} {r[1]}")
async def test_authenticated_routes_refuse_anonymous_callers(
    world: World, route: tuple[str, str]
) -> None:
    method, path = route
    url = path.replace("{username}", "alice").replace("{device_id}", world.alice.device_id)
    url = url.replace("{blob_id}", "A" * 32)
    for headers in ({}, {"authorization": "Bearer " + "x" * 43}, {"authorization": "Basic x"}):
        resp = await world.http.request(method, url, content=b"{}", headers=headers)
        assert_error(resp, 401, "unauthorized", f"{method} {path} {headers}")


async def test_sockets_refuse_anonymous_callers(world: World) -> None:
    for auth in (
        None,
        {},
        {"token": None},
        {"token": "x" * 43},
        {"token": world.tokens["alice"][:-1]},
    ):
        assert refusal_code(await refused(world.server.url, auth)) == "unauthorized", auth


# -- another user's device: socket events ---------------------------------------------


async def test_events_of_a_stranger(world: World) -> None:
    alice, bob, carol = world.socks["alice"], world.socks["bob"], world.socks["carol"]

    # ack: bob cannot delete what waits for alice, and it stays hers.
    body = b64encode(os.urandom(16))
    sent = await bob.call(
        "send",
        {"client_message_id": secrets.token_urlsafe(12), "envelopes": [world.alice.envelope(body)]},
    )
    assert sent["ok"] is True
    mine = [e["id"] for e in await alice.pending() if e["body"] == body]
    assert await carol.call("ack", {"ids": mine}) == {"ok": True, "deleted": 0}
    assert [e["id"] for e in await alice.pending() if e["body"] == body] == mine
    # sync: carol's queue never holds alice's envelopes.
    assert not [e for e in await carol.pending() if e["body"] == body]

    # keys_upload: keys signed by alice's device key, uploaded on carol's connection.
    await carol.expect_error(
        "keys_upload", {"one_time_keys": [world.alice.signed_key()]}, "bad_signature"
    )

    # presence and ephemeral sends: only between users who have a conversation.
    await carol.expect_error("presence", {"username": "alice"}, "not_in_conversation")
    await carol.expect_error(
        "send",
        {
            "client_message_id": secrets.token_urlsafe(12),
            "ephemeral": True,
            "envelopes": [world.alice.envelope()],
        },
        "not_in_conversation",
    )

    # settings are the caller's own.
    assert (await carol.call("settings", {"share_presence": False}))["share_presence"] is False
    assert (await alice.call("settings", None))["share_presence"] is True


async def test_ack_answers_the_same_whoever_owns_the_id(world: World) -> None:
    """An ack of an id that is not in the caller's queue gets one answer, whether the
    envelope waits for another device, was already taken by it, or never existed:
    otherwise the sender, who can guess the ids, learns when the recipient synced."""
    alice, bob = world.socks["alice"], world.socks["bob"]
    body = b64encode(os.urandom(16))
    sent = await alice.call(
        "send",
        {"client_message_id": secrets.token_urlsafe(12), "envelopes": [world.bob.envelope(body)]},
    )
    assert sent["ok"] is True
    [bobs] = [e["id"] for e in await bob.pending() if e["body"] == body]
    waiting = await alice.call("ack", {"ids": [bobs]})
    assert [e["id"] for e in await bob.pending() if e["body"] == body] == [bobs]
    assert await bob.call("ack", {"ids": [bobs]}) == {"ok": True, "deleted": 1}
    taken = await alice.call("ack", {"ids": [bobs]})
    never = await alice.call("ack", {"ids": [2**62]})
    assert waiting == taken == never == {"ok": True, "deleted": 0}


async def test_group_events_of_a_stranger(world: World) -> None:
    alice, bob, carol = world.socks["alice"], world.socks["bob"], world.socks["carol"]
    created = await alice.call("group_create", {"members": ["bob"]})
    assert created["ok"] is True, created
    group = created["group_id"]
    ref = {"group_id": group}

    # carol is no member: nothing about the group, nothing into it.
    for event, payload in [
        ("group_info", ref),
        ("group_send", {**ref, "client_message_id": "stranger0001", "body": "QUJD"}),
        ("group_add", {**ref, "usernames": ["carol"]}),
        ("group_remove", {**ref, "username": "bob"}),
        ("group_promote", {**ref, "username": "carol"}),
        ("group_leave", ref),
        ("group_device", {**ref, "username": "alice", "device_id": world.alice.device_id}),
    ]:
        await carol.expect_error(event, payload, "not_a_member", event)
    assert group not in [g["group_id"] for g in (await carol.call("group_list", {}))["groups"]]

    # bob is a member but no admin: he cannot change who is in it.
    for event, payload in [
        ("group_add", {**ref, "usernames": ["carol"]}),
        ("group_remove", {**ref, "username": "alice"}),
        ("group_promote", {**ref, "username": "bob"}),
    ]:
        await bob.expect_error(event, payload, "not_an_admin", event)
    members = {m["username"]: m["role"] for m in (await alice.call("group_info", ref))["members"]}
    assert members == {"alice": "admin", "bob": "member"}


# -- another user's device: HTTP ---------------------------------------------------------


def bearer(w: World, name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {w.tokens[name]}"}


async def test_devices_of_another_account(world: World) -> None:
    http, bob = world.http, world.bob
    name = "A" * 252
    resp = await http.put(
        f"/v1/devices/{bob.device_id}/name", json={"name": name}, headers=bearer(world, "carol")
    )
    assert_error(resp, 404, "unknown_device", "rename")
    resp = await http.delete(f"/v1/devices/{bob.device_id}", headers=bearer(world, "carol"))
    assert_error(resp, 404, "unknown_device", "revoke")
    await world.socks["bob"].assert_usable("bob still signed in")
    own = (await http.get("/v1/devices", headers=bearer(world, "carol"))).json()
    assert [d["device_id"] for d in own["devices"]] == [world.carol.device_id]

    # carol's grant cannot add a device to bob's account, even one signed by bob's identity.
    grant = (await http.post("/v1/devices/grant", headers=bearer(world, "carol"))).json()["grant"]
    intruder = Dev(
        bob.username, "INTRUDER01", bob.identity, IdentityKey.generate(), b64encode(os.urandom(32))
    )
    resp = await post(http, "/v1/devices", {"device": intruder.device_keys(), "grant": grant})
    assert_error(resp, 401, "unauthorized", "foreign grant")
    devices = (await http.get("/v1/users/bob/devices", headers=bearer(world, "alice"))).json()
    assert [d["device_id"] for d in devices["devices"]] == [bob.device_id]


async def test_backup_of_another_account(world: World) -> None:
    http = world.http
    owner_key = IdentityKey.generate()
    put = await http.put(
        "/v1/backup",
        json={"auth_key": owner_key.public_key, "ciphertext": "QUJD" * 10},
        headers=bearer(world, "alice"),
    )
    assert put.status_code == 200, put.text
    chal = (await post(http, "/v1/backup/challenge", {"username": "alice"})).json()["challenge"]
    wrong = IdentityKey.generate().sign(backup_auth_payload(challenge=chal, username="alice"))
    resp = await post(
        http, "/v1/backup/fetch", {"username": "alice", "challenge": chal, "signature": wrong}
    )
    assert_error(resp, 400, "bad_signature", "fetch with the wrong key")
    # carol's own backup does not touch alice's.
    await http.put(
        "/v1/backup",
        json={"auth_key": IdentityKey.generate().public_key, "ciphertext": "WFla" * 10},
        headers=bearer(world, "carol"),
    )
    chal = (await post(http, "/v1/backup/challenge", {"username": "alice"})).json()["challenge"]
    right = owner_key.sign(backup_auth_payload(challenge=chal, username="alice"))
    resp = await post(
        http, "/v1/backup/fetch", {"username": "alice", "challenge": chal, "signature": right}
    )
    assert resp.status_code == 200 and resp.json()["ciphertext"] == "QUJD" * 10


async def test_rendezvous_of_someone_else(world: World) -> None:
    http = world.http
    opened = (await post(http, "/v1/rendezvous", {})).json()
    channel = opened["channel"]
    other = (await post(http, "/v1/rendezvous", {})).json()["token"]  # a real token, of another
    for action, body in [
        ("write", {"token": other, "body": "QUJD"}),
        ("read", {"token": other}),
        ("close", {"token": other}),
    ]:
        resp = await post(http, f"/v1/rendezvous/{channel}/{action}", body)
        assert_error(resp, 401, "unauthorized", action)
    written = await post(
        http, f"/v1/rendezvous/{channel}/write", {"token": opened["token"], "body": "QUJD"}
    )
    assert written.status_code == 200, written.text


async def test_blobs_of_another_account(world: World) -> None:
    http = world.http
    created = await http.post("/v1/blobs", json={"size": 10}, headers=bearer(world, "alice"))
    assert created.status_code == 200, created.text
    blob = created.json()["blob_id"]
    part = await http.put(
        f"/v1/blobs/{blob}?offset=0",
        content=os.urandom(10),
        headers={**bearer(world, "carol"), "content-type": "application/octet-stream"},
    )
    assert part.status_code in (403, 404), part.text
    gone = await http.delete(f"/v1/blobs/{blob}", headers=bearer(world, "carol"))
    assert gone.status_code in (403, 404), gone.text
    status = await http.get(f"/v1/blobs/{blob}", headers=bearer(world, "alice"))
    assert status.status_code == 200, status.text
    assert status.json() == created.json(), "carol changed alice's upload"


async def test_keys_of_another_device(world: World) -> None:
    resp = await post(
        world.http,
        "/v1/keys/upload",
        {"one_time_keys": [world.alice.signed_key()]},
        token=world.tokens["carol"],
    )
    assert_error(resp, 400, "bad_signature", "alice's keys on carol's token")
