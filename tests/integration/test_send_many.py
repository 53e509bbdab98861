"""``send_many``: several messages in one frame, stored in order, each accepted or
refused on its own; and the SDK's outbox sending through it."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bisik.client import MessageFailed, MessageReceived
from bisik.crypto import b64encode
from bisik.proto._models import MAX_SEND_MANY
from tests.conftest import ClientFactory, RunningServer, next_event
from tests.integration.test_bad_input import World
from tests.integration.test_bad_input import world as bad_input_world


@pytest.fixture
async def world(server: RunningServer) -> AsyncIterator[World]:
    """alice, bob and carol of test_bad_input, registered and connected."""
    async for built in bad_input_world.__wrapped__(server):
        yield built


def message(envelopes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"client_message_id": secrets.token_urlsafe(12), "envelopes": envelopes, **extra}


async def test_stored_in_order_up_to_the_first_refusal(world: World) -> None:
    alice, bob = world.socks["alice"], world.socks["bob"]
    bodies = [b64encode(os.urandom(12)) for _ in range(6)]
    batch = [message([world.bob.envelope(body)]) for body in bodies]
    # The third names a device that does not exist.
    batch[2]["envelopes"].append({**world.bob.envelope(), "device_id": "NOSUCHDEVICE"})
    ack = await alice.call("send_many", {"messages": batch})
    assert ack["ok"] is True, ack
    results = ack["results"]
    assert [r["ok"] for r in results] == [True, True, False, False, False, False]
    assert results[2]["error"]["code"] == "unknown_device"
    # What comes after a refused message is not stored: nothing overtakes it.
    assert {r["error"]["code"] for r in results[3:]} == {"not_sent"}
    seqs = [r["seq"] for r in results if r["ok"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 2
    assert [e["body"] for e in await bob.pending() if e["body"] in bodies] == bodies[:2]

    # Sent again without the bad one: the first two are duplicates with their
    # first seq, the rest are stored after them, in order.
    again = await alice.call("send_many", {"messages": batch[:2] + batch[3:]})
    assert [r["ok"] for r in again["results"]] == [True] * 5
    assert [r["duplicate"] for r in again["results"]] == [True, True, False, False, False]
    assert [r["seq"] for r in again["results"][:2]] == seqs
    got = [e["body"] for e in await bob.pending() if e["body"] in bodies]
    assert got == bodies[:2] + bodies[3:]
    # A device addressed twice is refused the same way.
    twice = [message([world.bob.envelope(), world.bob.envelope()]), message([world.bob.envelope()])]
    answer = await alice.call("send_many", {"messages": twice})
    assert [r["error"]["code"] for r in answer["results"]] == ["bad_request", "not_sent"]


async def test_one_push_per_device_per_frame(world: World) -> None:
    alice, bob = world.socks["alice"], world.socks["bob"]
    batches: asyncio.Queue[Any] = asyncio.Queue()
    bob.sio.on("envelopes", batches.put)
    bodies = [b64encode(os.urandom(12)) for _ in range(5)]
    frame = {"messages": [message([world.bob.envelope(b)]) for b in bodies]}
    ack = await alice.call("send_many", frame)
    assert [r["ok"] for r in ack["results"]] == [True] * 5
    pushed = await asyncio.wait_for(batches.get(), 5)
    assert [e["body"] for e in pushed["envelopes"]] == bodies
    assert [e["seq"] for e in pushed["envelopes"]] == [r["seq"] for r in ack["results"]]
    assert bob.pushed.empty()  # not also one by one
    # A frame with one message for bob is pushed as a single envelope.
    single = b64encode(os.urandom(12))
    await alice.call("send_many", {"messages": [message([world.bob.envelope(single)])]})
    assert (await asyncio.wait_for(bob.pushed.get(), 5))["body"] == single


async def test_bad_frames_are_refused_whole(world: World) -> None:
    alice, bob = world.socks["alice"], world.socks["bob"]
    one = message([world.bob.envelope()])
    for case, payload in [
        ("no messages", {"messages": []}),
        ("not a list", {"messages": one}),
        ("too many", {"messages": [message([world.bob.envelope()])] * (MAX_SEND_MANY + 1)}),
        ("a malformed message", {"messages": [one, {**one, "envelopes": "x"}]}),
        ("not an object", [one]),
        ("unknown field", {"messages": [one], "extra": 1}),
    ]:
        await alice.expect_error("send_many", payload, "bad_request", case)
    # Typing indicators are never stored: not in a batch.
    typing = await alice.call(
        "send_many", {"messages": [message([world.bob.envelope()], ephemeral=True), one]}
    )
    assert [r["ok"] for r in typing["results"]] == [False, False]
    assert [r["error"]["code"] for r in typing["results"]] == ["bad_request", "not_sent"]
    await bob.assert_usable()


async def test_outbox_backlog_goes_out_in_frames_and_in_order(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    await alice.send_text("bob", "hello")  # sessions and device lists in place
    inbox = bob.subscribe()
    assert (await next_event(inbox, MessageReceived)).message.body == "hello"

    events: list[str] = []
    call = alice.transport.call

    async def spy(event: str, data: Any, timeout: float = 15.0) -> dict[str, Any]:
        events.append(event)
        return await call(event, data, timeout)

    alice.transport.call = spy  # type: ignore[method-assign]
    await server.stop()
    await asyncio.sleep(0.2)
    texts = [f"backlog {i:03d}" for i in range(150)]
    queued = [await alice.send_text("bob", text) for text in texts]
    await server.start()
    for m in queued:
        assert (await alice.wait_sent(m.id, timeout=30)).state == "sent"
    got = []
    while len(got) < len(texts):
        got.append((await next_event(inbox, MessageReceived, timeout=30)).message.body)
    assert got == texts
    assert [m.body for m in bob.history("alice", limit=200)][-150:] == texts
    # 150 messages took a few frames, not 150 round trips.
    assert 3 <= events.count("send_many") < 20, events.count("send_many")
    assert events.count("send") < 10


async def test_a_message_that_cannot_go_does_not_let_later_ones_overtake_it(
    make_client: ClientFactory, server: RunningServer
) -> None:
    """Queued offline: one to a user that does not exist, then three to bob. The
    first fails; bob's come in order, in the rounds after it."""
    alice = await make_client("alice")
    bob = await make_client("bob")
    await alice.send_text("bob", "hello")
    inbox, mine = bob.subscribe(), alice.subscribe()
    assert (await next_event(inbox, MessageReceived)).message.body == "hello"
    await server.stop()
    await asyncio.sleep(0.2)
    lost = await alice.send_text("nosuchuser", "to nobody")
    queued = [await alice.send_text("bob", f"after {i}") for i in range(3)]
    await server.start()
    failed = await next_event(mine, MessageFailed, timeout=30)
    assert failed.message_id == lost.id
    for m in queued:
        assert (await alice.wait_sent(m.id, timeout=30)).state == "sent"
    got = [(await next_event(inbox, MessageReceived, timeout=30)).message.body for _ in queued]
    assert got == ["after 0", "after 1", "after 2"]
    assert alice.pending_count() == 0
