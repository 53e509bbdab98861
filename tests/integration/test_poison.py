"""Nothing a peer puts inside an encrypted message can stop a client receiving
(issue #11, item 1): content out of range is refused, recorded, acked and
skipped, and what comes after it arrives."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bisik.client import Client, DecryptionFailed, MessageReceived
from bisik.client._group_store import Outbound
from bisik.client._models import new_message_id
from bisik.crypto import MegolmOutbound
from tests import _internals as internals
from tests.conftest import ClientFactory, next_event


async def send_raw(sender: Client, peer: str, content: dict[str, Any]) -> None:
    """What a modified client can send: any content, encrypted for ``peer``'s devices."""
    # A message the SDK would send, so that sessions and device lists are in place.
    await sender.encrypt_for(new_message_id(), {"to": peer, "sent_at": 0, "body": "x"})
    devices = internals.devices(sender).fresh_devices([peer])[peer]
    envelopes = []
    for device in devices:
        plaintext = {
            "v": 1,
            "type": "text",
            "id": new_message_id(),
            "sender": internals.stamp(sender).model_dump(),
            "recipient": {
                "username": device.username,
                "device_id": device.device_id,
                "ed25519": device.ed25519,
            },
            "to": peer,
            **content,
        }
        with internals.local_store(sender).transaction():
            kind, body = internals.machine(sender).encrypt(
                device.curve25519, json.dumps(plaintext, ensure_ascii=False).encode()
            )
        envelopes.append(
            {"username": peer, "device_id": device.device_id, "type": kind, "body": body}
        )
    message_id = new_message_id()
    await sender.transport.call("send", {"client_message_id": message_id, "envelopes": envelopes})


async def send_raw_group(sender: Client, group_id: str, content: dict[str, Any]) -> None:
    """Any content under the sender's own Megolm session (its ratchet moves on)."""
    store = internals.group_store(sender)
    outbound = store.outbound(group_id)
    assert outbound is not None
    session = MegolmOutbound.from_pickle(outbound.pickle, internals.pickle_key(sender))
    plaintext = {
        "v": 1,
        "type": "text",
        "id": new_message_id(),
        "sender": internals.stamp(sender).model_dump(),
        "group_id": group_id,
        **content,
    }
    body = session.encrypt(json.dumps(plaintext, ensure_ascii=False).encode())
    with internals.local_store(sender).transaction():
        store.save_outbound(
            group_id,
            Outbound(
                outbound.session_id,
                session.pickle(internals.pickle_key(sender)),
                outbound.created_at,
                outbound.shared_with,
            ),
        )
    request = {"group_id": group_id, "client_message_id": new_message_id(), "body": body}
    await sender.transport.call("group_send", request)


async def after(inbox: asyncio.Queue[object], body: str) -> list[object]:
    """Events until the message ``body`` arrives (it must)."""
    seen: list[object] = []
    async with asyncio.timeout(10):
        while True:
            event = await inbox.get()
            seen.append(event)
            if isinstance(event, MessageReceived) and event.message.body == body:
                return seen


@pytest.mark.parametrize("sent_at", [2**70, 10**17, -5])
async def test_a_message_with_an_impossible_time_is_skipped_and_the_next_arrives(
    make_client: ClientFactory, sent_at: int
) -> None:
    alice = await make_client("alice")
    mallory = await make_client("mallory")
    a_in = alice.subscribe()
    await send_raw(mallory, "alice", {"body": "poison", "sent_at": sent_at})
    await mallory.send_text("alice", "after the poison")
    events = await after(a_in, "after the poison")
    assert any(isinstance(e, DecryptionFailed) and e.sender == "mallory" for e in events)
    assert [m.body for m in alice.history("mallory")] == ["after the poison"]
    assert [m.body for m in alice.unread()] == ["after the poison"]
    # Acked: a new connection does not meet it again.
    alice.resync()
    await mallory.send_text("alice", "and again")
    events = await after(a_in, "and again")
    assert not any(isinstance(e, DecryptionFailed) for e in events)


async def test_a_group_message_with_an_impossible_time_is_skipped_by_every_member(
    make_client: ClientFactory,
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    mallory = await make_client("mallory")
    group = await mallory.create_group("Trap", ["alice", "bob"])
    a_in, b_in = alice.subscribe(), bob.subscribe()
    await mallory.send_text("#Trap", "hello")
    for inbox in (a_in, b_in):
        await after(inbox, "hello")
    await send_raw_group(mallory, group.group_id, {"body": "poison", "sent_at": 2**70})
    await mallory.send_text("#Trap", "still here")
    for client, inbox in ((alice, a_in), (bob, b_in)):
        await after(inbox, "still here")
        assert [m.body for m in client.history("#Trap")] == ["hello", "still here"]


async def test_a_stored_failure_of_any_kind_does_not_stop_the_pipeline(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: whatever storing one message raises, the message is
    refused alone and the others of its run are stored."""
    alice = await make_client("alice")
    bob = await make_client("bob")
    a_in = alice.subscribe()
    await bob.send_text("alice", "warm-up")
    await next_event(a_in, MessageReceived)

    timeline = internals.timeline(alice)
    receive = timeline.receive

    def fragile(content: object, **kwargs: object) -> object:
        if getattr(content, "body", "") == "boom":
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return receive(content, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(timeline, "receive", fragile)
    for body in ("one", "boom", "two"):
        await bob.send_text("alice", body)
    events = await after(a_in, "two")
    assert [m.body for m in alice.history("bob")] == ["warm-up", "one", "two"]
    assert any(isinstance(e, DecryptionFailed) for e in events)
