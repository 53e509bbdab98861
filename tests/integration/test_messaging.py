"""Two (or three) real clients through a real server: delivery, order, restarts, idempotency."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bisik.client import (
    Client,
    DecryptionFailed,
    MessageReceived,
    MessageSent,
    ProtocolError,
)
from bisik.client import _inbox as inbox_module
from bisik.server import free_port
from bisik.server.stores.schema import devices, envelopes
from tests import _internals as internals
from tests.conftest import PASSWORD, ClientFactory, RunningServer, next_event, now_ms


async def received_bodies(queue: asyncio.Queue[object], count: int) -> list[str]:
    bodies = []
    while len(bodies) < count:
        event = await next_event(queue, MessageReceived)
        bodies.append(event.message.body)
    return bodies


def hold_sends(client: Client, monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, ...]:
    """Hold the client's sends before they reach the server (``held`` is set
    when one is held) until ``release`` is set."""
    release, held = asyncio.Event(), asyncio.Event()
    call = client.transport.call

    async def slow_call(event: str, data: Any, timeout: float = 15.0) -> dict[str, Any]:
        if event in ("send", "send_many"):
            held.set()
            await release.wait()
        return await call(event, data, timeout)

    monkeypatch.setattr(client.transport, "call", slow_call)
    return release, held


async def test_a_message_next_in_line_is_encrypted_in_the_commit_that_stores_it(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    b_in = bob.subscribe()
    await alice.send_text("bob", "warm-up")  # sessions and device lists in place
    await received_bodies(b_in, 1)
    assert await alice.drain_outbox(10)  # bob's delivered receipt settled too

    commits = internals.count_commits(alice)
    release, held = hold_sends(alice, monkeypatch)
    first = await alice.send_text("bob", "next in line")
    # Stored and encrypted in one commit, before send_text returned.
    assert len(commits) == 1
    [item] = internals.local_store(alice).outbox()
    assert item.message_id == first.id and item.envelopes
    assert {e["username"] for e in item.envelopes} == {"bob"}
    await asyncio.wait_for(held.wait(), 10)
    # A message typed while one waits for the server is encrypted in its turn.
    second = await alice.send_text("bob", "behind it")
    assert [i.envelopes is None for i in internals.local_store(alice).outbox()] == [False, True]
    release.set()
    assert await received_bodies(b_in, 2) == ["next in line", "behind it"]
    for message in (first, second):
        assert (await alice.wait_sent(message.id, timeout=10)).state in ("sent", "delivered")

    # A device list that needs fetching again: never from inside send_text.
    assert await alice.drain_outbox(10)
    internals.devices(alice).forget("bob")
    await alice.send_text("bob", "after a refresh")
    assert [i.envelopes for i in internals.local_store(alice).outbox()] == [None]
    assert await received_bodies(b_in, 1) == ["after a refresh"]


async def test_offline_delivery_in_order_and_reply(make_client: ClientFactory) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob", connect=False)
    texts = [f"message {i} while bob is away" for i in range(25)]
    for text in texts:
        await alice.send_text("bob", text)
    for message in alice.history("bob"):
        await alice.wait_sent(message.id, timeout=10)
    assert [m.state for m in alice.history("bob")] == ["sent"] * 25

    inbox = bob.subscribe()
    await bob.connect()
    assert await received_bodies(inbox, 25) == texts
    assert [m.body for m in bob.history("alice")] == texts

    alice_inbox = alice.subscribe()
    reply = await bob.send_text("alice", "back now")
    await bob.wait_sent(reply.id, timeout=10)
    assert (await next_event(alice_inbox, MessageReceived)).message.body == "back now"
    assert [m.body for m in alice.history("bob")] == [*texts, "back now"]
    assert [m.body for m in bob.history("alice")] == [*texts, "back now"]
    assert [m.direction for m in bob.history("alice")][-2:] == ["in", "out"]
    assert bob.conversations() == [("@alice", "back now")]


async def test_a_message_arriving_while_a_send_waits_for_its_answer_is_opened_at_once(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    b_in, a_in = bob.subscribe(), alice.subscribe()
    await alice.send_text("bob", "warm-up")  # sessions and device lists in place
    await received_bodies(b_in, 1)
    # bob's next send is held before it reaches the server, as a slow link would.
    release, held = hold_sends(bob, monkeypatch)
    mine = await bob.send_text("alice", "on its way")
    await asyncio.wait_for(held.wait(), 10)
    await alice.send_text("bob", "meanwhile")
    # Opened while bob's worker still waits for the answer to his send.
    assert await received_bodies(b_in, 1) == ["meanwhile"]
    assert not release.is_set() and bob.history("alice")[-2].state == "pending"
    release.set()
    assert (await bob.wait_sent(mine.id, timeout=10)).state in ("sent", "delivered")
    assert "on its way" in await received_bodies(a_in, 1)
    assert [m.body for m in bob.history("alice")] == ["warm-up", "on its way", "meanwhile"]


async def test_a_push_opened_while_a_send_waits_does_not_overtake_a_queued_resync(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server lost a push and asked for a resync; a later push that arrives
    while a send waits for its answer is opened after the resync, in order."""
    armed, lost = asyncio.Event(), []
    alice = await make_client("alice")
    bob = await make_client("bob")
    # bob's socket handler for a pushed envelope, as the client registered it.
    on_envelope = bob.transport.sio.handlers["/"]["envelope"]

    async def losing(data: Any) -> None:
        if armed.is_set() and not lost:
            lost.append(data)  # as if the server's fan-out dropped it
            return
        await on_envelope(data)

    async def losing_some(data: Any) -> None:  # several in one push, in order
        for envelope in data["envelopes"]:
            await losing(envelope)

    bob.transport.on("envelope", losing)
    bob.transport.on("envelopes", losing_some)
    b_in = bob.subscribe()
    await bob.send_text("alice", "warm-up")  # sessions and device lists in place
    await asyncio.sleep(0.5)  # alice's delivered receipt reaches bob
    release, held = hold_sends(bob, monkeypatch)
    await bob.send_text("alice", "held")
    await asyncio.wait_for(held.wait(), 10)
    armed.set()
    first = await alice.send_text("bob", "first")
    await alice.wait_sent(first.id, timeout=10)
    assert lost  # its push never reached bob
    bob.resync()  # what the server asks for after losing pushes
    second = await alice.send_text("bob", "second")
    await alice.wait_sent(second.id, timeout=10)
    await asyncio.sleep(0.2)  # its push reaches bob while his send is held
    release.set()
    assert await received_bodies(b_in, 2) == ["first", "second"]
    assert [m.body for m in bob.history("alice")][-2:] == ["first", "second"]


async def test_a_send_to_a_new_peer_is_queued_when_the_server_just_became_unreachable(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket still counts as connected but HTTP fails (the server was just
    killed): the first message to a peer whose devices are not known yet is
    queued, as when offline, instead of raising (the sigkill fault test hit it)."""
    alice = await make_client("alice")
    carol = await make_client("carol")
    c_in = carol.subscribe()
    http = alice.transport.http
    dead = httpx.AsyncClient(base_url=f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(alice.transport, "http", dead)
    try:
        assert alice.connected
        message = await alice.send_text("carol", "first words")
        assert message.state == "pending" and alice.pending_count() == 1
    finally:
        monkeypatch.setattr(alice.transport, "http", http)
        await dead.aclose()
    alice.flush_outbox()  # what the next reconnect would do
    assert await received_bodies(c_in, 1) == ["first words"]
    assert (await alice.wait_sent(message.id, timeout=10)).state in ("sent", "delivered")


async def test_an_unsubscribed_queue_gets_no_more_events(make_client: ClientFactory) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    kept, dropped = bob.subscribe(), bob.subscribe()
    await alice.send_text("bob", "both see this")
    assert (await next_event(dropped, MessageReceived)).message.body == "both see this"
    bob.unsubscribe(dropped)
    bob.unsubscribe(dropped)  # twice: no error
    while not dropped.empty():  # what came before unsubscribing (e.g. receipts) stays
        dropped.get_nowait()
    await alice.send_text("bob", "only one sees this")
    assert await received_bodies(kept, 2) == ["both see this", "only one sees this"]
    assert dropped.empty()  # events go to every subscribed queue at once


async def test_pushed_messages_are_acked_even_when_the_client_closes_at_once(
    make_client: ClientFactory, server: RunningServer
) -> None:
    """Acks for pushed envelopes ask for no answer; closing right after a message
    arrives still gets them to the server, which then holds nothing for bob."""
    alice = await make_client("alice")
    bob = await make_client("bob")
    inbox = bob.subscribe()
    for i in range(3):
        await alice.send_text("bob", f"hello {i}")
    assert await received_bodies(inbox, 3) == [f"hello {i}" for i in range(3)]
    await bob.close()

    assert await held_for(server, bob, settle=True) == 0


async def test_pushed_messages_are_acked_once_per_burst(
    make_client: ClientFactory, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages pushed one by one within ACK_DELAY_S are acked with one ack,
    which the server gets while bob stays connected."""
    monkeypatch.setattr(inbox_module, "ACK_DELAY_S", 3.0)
    alice = await make_client("alice")
    bob = await make_client("bob")
    acks: list[list[int]] = []
    tell = bob.transport.tell

    async def counting_tell(event: str, data: Any) -> None:
        if event == "ack":
            acks.append(list(data["ids"]))
        await tell(event, data)

    bob.transport.tell = counting_tell  # type: ignore[method-assign]
    inbox = bob.subscribe()
    for i in range(5):  # each its own push
        await alice.send_text("bob", f"one by one {i}")
        assert await received_bodies(inbox, 1) == [f"one by one {i}"]
    assert acks == []
    assert await held_for(server, bob) == 5
    assert await held_for(server, bob, settle=True) == 0
    assert bob.connected
    assert [len(ids) for ids in acks] == [5]


async def held_for(server: RunningServer, client: Client, *, settle: bool = False) -> int:
    """Envelopes the server holds for ``client``'s device (``settle``: polled
    for up to 5 s until there are none)."""

    async def count() -> int:
        async with server.services.engine.connect() as conn:
            rows = await conn.execute(
                select(func.count())
                .select_from(
                    envelopes.join(devices, envelopes.c.recipient_device_pk == devices.c.id)
                )
                .where(devices.c.device_id == client.device_id)
            )
            return int(rows.scalar_one())

    for _ in range(50 if settle else 0):
        if await count() == 0:
            break
        await asyncio.sleep(0.1)
    return await count()


async def test_many_rounds_after_queues_empty(make_client: ClientFactory) -> None:
    """Envelope ids keep growing after every queue was acked and emptied."""
    alice = await make_client("alice")
    bob = await make_client("bob")
    a_in, b_in = alice.subscribe(), bob.subscribe()
    for i in range(5):
        await alice.send_text("bob", f"ping {i}")
        assert (await next_event(b_in, MessageReceived)).message.body == f"ping {i}"
        await asyncio.sleep(0.05)  # let the ack land and the queue empty
        await bob.send_text("alice", f"pong {i}")
        assert (await next_event(a_in, MessageReceived)).message.body == f"pong {i}"
        await asyncio.sleep(0.05)
    assert len(bob.history("alice")) == 10


async def test_server_restart_keeps_queued_messages(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob", connect=False)
    for i in range(5):
        sent = await alice.send_text("bob", f"queued {i}")
        await alice.wait_sent(sent.id, timeout=10)

    await server.stop()
    await server.start()

    inbox = bob.subscribe()
    await bob.connect()
    assert await received_bodies(inbox, 5) == [f"queued {i}" for i in range(5)]

    # alice reconnects by herself and keeps talking.
    await asyncio.wait_for(alice.synced.wait(), 15)
    after = await alice.send_text("bob", "after the restart")
    await alice.wait_sent(after.id, timeout=15)
    assert (await next_event(inbox, MessageReceived)).message.body == "after the restart"


async def test_outbox_sends_when_the_server_comes_back(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    inbox = bob.subscribe()
    await server.stop()
    await asyncio.sleep(0.2)
    assert not alice.connected
    queued = await alice.send_text("bob", "typed while offline")
    assert queued.state == "pending"
    assert alice.pending_count() == 1
    await server.start()
    sent = await alice.wait_sent(queued.id, timeout=20)
    assert sent.state == "sent"
    assert (await next_event(inbox, MessageReceived, timeout=20)).message.body == (
        "typed while offline"
    )
    await asyncio.sleep(0.3)
    assert [m.body for m in bob.history("alice")] == ["typed while offline"]
    assert [m.body for m in alice.history("bob")] == ["typed while offline"]


async def test_client_restart_mid_conversation(make_client: ClientFactory, tmp_path: Path) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    a_in, b_in = alice.subscribe(), bob.subscribe()
    await alice.send_text("bob", "one")
    await next_event(b_in, MessageReceived)
    await bob.send_text("alice", "two")
    await next_event(a_in, MessageReceived)

    await bob.close()
    await alice.send_text("bob", "three, while bob restarts")
    bob2 = await Client.open(tmp_path / "homes" / "bob", PASSWORD)
    try:
        b2_in = bob2.subscribe()
        await bob2.connect()
        assert (await next_event(b2_in, MessageReceived)).message.body == (
            "three, while bob restarts"
        )
        await bob2.send_text("alice", "four, from the reopened profile")
        assert (await next_event(a_in, MessageReceived)).message.body == (
            "four, from the reopened profile"
        )
        assert [m.body for m in bob2.history("alice")] == [
            "one",
            "two",
            "three, while bob restarts",
            "four, from the reopened profile",
        ]
    finally:
        await bob2.close()


async def test_resent_message_id_is_stored_and_delivered_once(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob", connect=False)
    # What the outbox does after a reconnect: the same id and envelopes again.
    envelopes = await alice.encrypt_for(
        "retrymessage01", {"to": "bob", "body": "only once", "sent_at": now_ms()}
    )
    first = await alice.transport.call(
        "send", {"client_message_id": "retrymessage01", "envelopes": envelopes}
    )
    again = await alice.transport.call(
        "send", {"client_message_id": "retrymessage01", "envelopes": envelopes}
    )
    assert first["duplicate"] is False
    assert again["duplicate"] is True
    assert again["seq"] == first["seq"]

    inbox = bob.subscribe()
    await bob.connect()
    assert (await next_event(inbox, MessageReceived)).message.body == "only once"
    await asyncio.sleep(0.3)
    assert [m.body for m in bob.history("alice")] == ["only once"]


async def test_tampered_envelope_is_rejected_and_nothing_else_breaks(
    make_client: ClientFactory,
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    inbox = bob.subscribe()
    await alice.send_text("bob", "before")
    await next_event(inbox, MessageReceived)

    envelopes = await alice.encrypt_for(
        "tampered000001", {"to": "bob", "body": "evil", "sent_at": now_ms()}
    )
    body = envelopes[0]["body"]
    middle = len(body) // 2
    flipped = "A" if body[middle] != "A" else "B"
    envelopes[0]["body"] = body[:middle] + flipped + body[middle + 1 :]
    await alice.transport.call(
        "send", {"client_message_id": "tampered000001", "envelopes": envelopes}
    )
    failed = await next_event(inbox, DecryptionFailed)
    assert failed.sender == "alice"

    await alice.send_text("bob", "after")
    assert (await next_event(inbox, MessageReceived)).message.body == "after"
    assert [m.body for m in bob.history("alice")] == ["before", "after"]


async def test_envelope_for_another_device_is_refused(make_client: ClientFactory) -> None:
    """A server that routes bob's ciphertext to carol gets it rejected, not shown."""
    alice = await make_client("alice")
    await make_client("bob")
    carol = await make_client("carol")
    inbox = carol.subscribe()
    envelopes = await alice.encrypt_for(
        "misrouted00001", {"to": "bob", "body": "for bob only", "sent_at": now_ms()}
    )
    carol_device = carol.device_id
    envelopes[0]["username"] = "carol"
    envelopes[0]["device_id"] = carol_device
    await alice.transport.call(
        "send", {"client_message_id": "misrouted00001", "envelopes": envelopes}
    )
    failed = await next_event(inbox, DecryptionFailed)
    assert failed.sender == "alice"
    assert carol.history("alice") == []


async def test_concurrent_one_time_key_claims_never_share_a_key(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob", connect=False)
    token = await alice.transport.token()
    headers = {"Authorization": f"Bearer {token}"}
    body = {"devices": [{"username": "bob", "device_id": bob.device_id}]}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as http:
        answers = await asyncio.gather(*(http.post("/v1/keys/claim", json=body) for _ in range(70)))
    keys = []
    for answer in answers:
        assert answer.status_code == 200, answer.text
        (claimed,) = answer.json()["keys"]
        keys.append((claimed["key"]["key_id"], claimed["fallback"]))
    one_time = [k for k, fallback in keys if not fallback]
    assert len(one_time) == 50
    assert len(set(one_time)) == 50
    assert len([k for k, fallback in keys if fallback]) == 20


async def test_low_one_time_keys_are_replenished(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    token = await alice.transport.token()
    body = {"devices": [{"username": "bob", "device_id": bob.device_id}]}
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        for _ in range(45):
            assert (await http.post("/v1/keys/claim", json=body)).status_code == 200
        count = 0
        for _ in range(100):
            bob_token = await bob.transport.token()
            answer = await http.get(
                "/v1/keys/count", headers={"Authorization": f"Bearer {bob_token}"}
            )
            count = answer.json()["one_time_keys"]
            if count >= 40:
                break
            await asyncio.sleep(0.05)
    # Without a top-up 5 would be left; the device tops up when told it runs low
    # (claims racing the top-up may take a few of the new keys).
    assert count >= 40


async def test_messages_are_copied_to_the_senders_other_devices(
    make_client: ClientFactory,
) -> None:
    """The sent-message sync path: an envelope to one of our own devices."""
    alice = await make_client("alice")
    bob = await make_client("bob")
    sent = await alice.send_text("bob", "hello")
    sent = await alice.wait_sent(sent.id, timeout=10)
    assert sent.state == "sent"
    events = bob.subscribe()
    sent_events = alice.subscribe()
    reply = await bob.send_text("alice", "hi")
    assert (await next_event(sent_events, MessageReceived)).message.body == "hi"
    assert (await next_event(events, MessageSent)).message.id == reply.id


async def test_fallback_key_when_one_time_keys_run_out_then_replaced(
    make_client: ClientFactory, server: RunningServer
) -> None:
    eve = await make_client("eve")
    bob = await make_client("bob")
    token = await eve.transport.token()
    body = {"devices": [{"username": "bob", "device_id": bob.device_id}]}
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        # Someone drains every one-time key of bob's while bob is offline.
        await bob.close()
        claims = [(await http.post("/v1/keys/claim", json=body)).json() for _ in range(50)]
        assert not any(c["keys"][0]["fallback"] for c in claims)

        # alice's session then starts from bob's fallback key; bob can still read her.
        alice = await make_client("alice")
        await alice.send_text("bob", "via the fallback key")
        claimed = (await http.post("/v1/keys/claim", json=body)).json()["keys"][0]
        assert claimed["fallback"] is True

        bob2 = await Client.open(server.config.data_dir.parent / "homes" / "bob", PASSWORD)
        try:
            inbox = bob2.subscribe()
            await bob2.connect()
            assert (await next_event(inbox, MessageReceived)).message.body == (
                "via the fallback key"
            )
            # Told on connect that the fallback was used, bob publishes fresh keys.
            counts = {}
            for _ in range(100):
                counts = await bob2.transport.call("keys_count", {})
                if counts["one_time_keys"] == 50 and not counts["fallback_used"]:
                    break
                await asyncio.sleep(0.05)
            assert counts["one_time_keys"] == 50
            assert counts["fallback_used"] is False
            fresh = (await http.post("/v1/keys/claim", json=body)).json()["keys"][0]
            assert fresh["fallback"] is False
        finally:
            await bob2.close()


async def test_a_device_cannot_pile_up_one_time_keys(make_client: ClientFactory) -> None:
    alice = await make_client("alice")
    with internals.local_store(alice).transaction():
        keys = internals.machine(alice).generate_one_time_keys(160)
    with pytest.raises(ProtocolError) as err:
        await alice.transport.call("keys_upload", {"one_time_keys": keys})
    assert err.value.code == "too_many_keys"
    counts = await alice.transport.call("keys_count", {})
    assert counts["one_time_keys"] == 50  # nothing of the refused upload was stored
