from __future__ import annotations

from bisik.client import MessageReceived
from tests.conftest import ClientFactory, next_event


async def test_alice_and_bob_chat(make_client: ClientFactory) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    inbox = bob.subscribe()
    sent = await alice.send_text("bob", "hello bob")
    acked = await alice.wait_sent(sent.id, timeout=10)
    assert acked.state == "sent"
    event = await next_event(inbox, MessageReceived)
    assert event.message.body == "hello bob"
    assert event.message.sender == "alice"
