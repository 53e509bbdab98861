"""Presence, typing, receipts, read sync, privacy settings and Web Push."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import http_ece
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bisik.client import (
    Client,
    MessageReceived,
    MessagesRead,
    PresenceChanged,
    ProtocolError,
    ReceiptUpdated,
    TypingChanged,
)
from tests._internals import signals
from tests.conftest import ClientFactory, RunningServer, next_event, now_ms
from tests.integration.test_devices import link


async def chat_once(a: Client, b: Client) -> None:
    """A first message and b's delivered receipt back make a and b conversation
    partners (each has sent the other something)."""
    inbox, receipts = b.subscribe(), a.subscribe()
    sent = await a.send_text(b.username, "hello")
    await a.wait_sent(sent.id, timeout=10)
    await next_event(inbox, MessageReceived)
    while True:
        receipt = await next_event(receipts, ReceiptUpdated)
        if receipt.kind == "delivered" and sent.id in receipt.message_ids:
            return


async def test_presence_reaches_only_partners_and_is_reciprocal(
    make_client: ClientFactory,
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob", connect=False)
    carol = await make_client("carol")
    await bob.connect()
    await asyncio.wait_for(bob.synced.wait(), 10)
    await chat_once(alice, bob)

    seen = await alice.presence("bob")
    assert seen is not None and seen.online
    with pytest.raises(ProtocolError) as err:
        await carol.presence("bob")
    assert err.value.code == "not_in_conversation"

    alice_events, carol_events = alice.subscribe(), carol.subscribe()
    await bob.close()
    offline = await next_event(alice_events, PresenceChanged)
    assert (offline.username, offline.online) == ("bob", False)
    assert offline.last_seen_at is not None
    await asyncio.sleep(0.3)
    assert not any(isinstance(e, PresenceChanged) for e in _drain(carol_events))

    # alice stops sharing: she sees nobody's presence either.
    await alice.update_settings(presence=False)
    assert await alice.presence("bob") is None
    await alice.update_settings(presence=True)
    assert await alice.presence("bob") is not None


async def _junk_to(sender: Client, recipient: Client, message_id: str) -> None:
    """A stored envelope nobody can decrypt, from a sender the recipient never wrote to."""
    await sender.transport.call(
        "send",
        {
            "client_message_id": message_id,
            "envelopes": [
                {
                    "username": recipient.username,
                    "device_id": recipient.device_id,
                    "type": 1,
                    "body": "AAAA" * 8,
                }
            ],
        },
    )


async def test_one_sided_messages_give_no_presence_or_typing(make_client: ClientFactory) -> None:
    """Sending to a stranger (even many times) does not make them a partner: a pair
    counts for presence and typing only once each side has sent the other something."""
    mallory = await make_client("mallory")
    carol = await make_client("carol")
    await _junk_to(mallory, carol, "junkcarol0001")
    await _junk_to(mallory, carol, "junkcarol0002")

    with pytest.raises(ProtocolError) as err:
        await mallory.presence("carol")
    assert err.value.code == "not_in_conversation"
    typing = await mallory.encrypt_for(
        "typingcarol002",
        {"to": "carol", "type": "typing", "scope": "peer", "typing": True, "sent_at": now_ms()},
    )
    with pytest.raises(ProtocolError) as err:
        await mallory.transport.call(
            "send", {"client_message_id": "typingcarol002", "envelopes": typing, "ephemeral": True}
        )
    assert err.value.code == "not_in_conversation"
    # carol does not see mallory's either: the pair is not one for her side alone.
    with pytest.raises(ProtocolError) as err:
        await carol.presence("mallory")
    assert err.value.code == "not_in_conversation"
    watching = mallory.subscribe()
    await carol.close()
    await asyncio.sleep(0.3)
    assert not any(isinstance(e, PresenceChanged) for e in _drain(watching))


async def test_a_reply_makes_the_pair(make_client: ClientFactory) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    await _junk_to(alice, bob, "junkbob000001")
    with pytest.raises(ProtocolError):
        await alice.presence("bob")
    sent = await bob.send_text("alice", "who is this?")
    await bob.wait_sent(sent.id, timeout=10)
    seen = await alice.presence("bob")
    assert seen is not None and seen.online
    seen = await bob.presence("alice")
    assert seen is not None and seen.online


def _drain(queue: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def test_typing_is_throttled_expires_and_needs_a_conversation(
    make_client: ClientFactory,
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    carol = await make_client("carol")
    await chat_once(alice, bob)
    signals(bob).typing_timeout_s = 0.5
    b_in = bob.subscribe()
    for _ in range(5):
        alice.set_typing("bob", True)
    started = await next_event(b_in, TypingChanged)
    assert (started.username, started.typing) == ("alice", True)
    stopped = await next_event(b_in, TypingChanged)
    assert stopped.typing is False  # expired without a refresh
    await asyncio.sleep(0.3)
    assert not any(isinstance(e, TypingChanged) for e in _drain(b_in)), "throttled to one start"

    # No conversation with carol: the server refuses to relay.
    envelopes = await alice.encrypt_for(
        "typingcarol001",
        {"to": "carol", "type": "typing", "scope": "peer", "typing": True, "sent_at": now_ms()},
    )
    with pytest.raises(ProtocolError) as err:
        await alice.transport.call(
            "send",
            {"client_message_id": "typingcarol001", "envelopes": envelopes, "ephemeral": True},
        )
    assert err.value.code == "not_in_conversation"
    assert carol.history("alice") == []

    # bob turns typing off: alice's indicators are no longer shown to him.
    await bob.update_settings(typing=False)
    alice.set_typing("bob", False)  # ends the start above: the next is not throttled
    alice.set_typing("bob", True)
    await asyncio.sleep(0.5)
    assert not any(isinstance(e, TypingChanged) for e in _drain(b_in))


async def test_receipts_sent_delivered_read_and_read_sync(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    await chat_once(alice, bob)
    tablet = await link(bob, tmp_path / "bob-tablet")
    try:
        await tablet.connect()
        await asyncio.wait_for(tablet.synced.wait(), 10)
        await asyncio.sleep(0.3)
        a_in, b_in, t_in = alice.subscribe(), bob.subscribe(), tablet.subscribe()
        sent = await alice.send_text("bob", "did you get this?")
        assert (await alice.wait_sent(sent.id, timeout=10)).state in ("sent", "delivered")
        await next_event(b_in, MessageReceived)
        await next_event(t_in, MessageReceived)
        delivered = set()
        while len(delivered) < 2:
            event = await next_event(a_in, ReceiptUpdated)
            assert event.kind == "delivered" and sent.id in event.message_ids
            delivered.add(event.device_id)
        assert delivered == {bob.device_id, tablet.device_id}
        assert alice.history("bob")[-1].state == "delivered"
        assert tablet.unread_counts()["@alice"] >= 1

        assert bob.mark_read("alice") >= 1
        read = await next_event(a_in, ReceiptUpdated)
        assert (read.kind, read.username) == ("read", "bob")
        assert alice.history("bob")[-1].state == "read"
        synced = await next_event(t_in, MessagesRead)
        assert sent.id in synced.message_ids
        assert tablet.unread_counts().get("@alice", 0) == 0
        assert {k for _, _, k, _ in alice.receipts(sent.id)} == {"delivered", "read"}
    finally:
        await tablet.close()


async def test_read_receipts_off_is_reciprocal(make_client: ClientFactory) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    await chat_once(alice, bob)
    await chat_once(bob, alice)
    await bob.update_settings(read_receipts=False)
    a_in, b_in = alice.subscribe(), bob.subscribe()

    sent = await alice.send_text("bob", "read me")
    await next_event(b_in, MessageReceived)
    await next_event(a_in, ReceiptUpdated)  # delivered still flows
    bob.mark_read("alice")
    await asyncio.sleep(0.5)
    assert not any(isinstance(e, ReceiptUpdated) and e.kind == "read" for e in _drain(a_in)), (
        "bob sends no read receipts"
    )
    assert alice.history("bob")[-1].state == "delivered"

    mine = await bob.send_text("alice", "and you?")
    await next_event(a_in, MessageReceived)
    alice.mark_read("bob")
    await asyncio.sleep(0.5)
    assert bob.history("alice")[-1].id == mine.id
    assert bob.history("alice")[-1].state != "read", "nor does he see alice's"
    assert sent.id


class PushEndpoint:
    """A local stand-in for a browser's push service: records what it is sent."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.auth = base64.urlsafe_b64encode(b"0123456789abcdef").decode().rstrip("=")

    def keys(self) -> dict[str, str]:
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {"p256dh": base64.urlsafe_b64encode(raw).decode().rstrip("="), "auth": self.auth}

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(status=201)

    def decrypt(self, body: bytes) -> dict[str, Any]:
        plain = http_ece.decrypt(
            body,
            private_key=self.private,
            auth_secret=base64.urlsafe_b64decode(self.auth + "=="),
            version="aes128gcm",
        )
        return dict(json.loads(plain))


async def test_web_push_to_an_offline_device_is_content_free_and_rate_limited(
    server_factory: Any,
    tmp_path: Path,
) -> None:
    from bisik.client import Client as C
    from tests.conftest import FAST_KDF, PASSWORD

    server: RunningServer = await server_factory(push_allow_private=True, push_interval_s=60)
    endpoint = PushEndpoint()
    app = web.Application()
    app.router.add_post("/push/{id}", endpoint.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    clients = []
    try:
        for name in ("alice", "bob"):
            client = await C.create_account(
                tmp_path / name,
                server_url=server.url,
                username=name,
                password=PASSWORD,
                kdf=FAST_KDF,
            )
            clients.append(client)
            await client.connect()
            await asyncio.wait_for(client.synced.wait(), 10)
        alice, bob = clients
        assert len(await bob.push_public_key()) > 80
        await bob.register_push(
            {"endpoint": f"http://127.0.0.1:{port}/push/bob", "keys": endpoint.keys()}
        )
        await bob.transport.sio.disconnect()  # bob goes offline
        await asyncio.sleep(0.3)
        for text in ("secret one", "secret two"):
            sent = await alice.send_text("bob", text)
            await alice.wait_sent(sent.id, timeout=10)
        for _ in range(100):
            if endpoint.received:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert len(endpoint.received) == 1, "rate-limited: one push for both messages"
        headers, body = endpoint.received[0]
        assert headers["Authorization"].startswith("vapid ")
        payload = endpoint.decrypt(body)
        assert payload == {"type": "new_messages"}
        assert b"alice" not in body and b"secret" not in body
    finally:
        for client in clients:
            await client.close()
        await runner.cleanup()
