"""A compromised server tampering with the envelopes it relays (1:1, Olm).

After test_malicious_server.py (injected devices, swapped identity keys), the
relay attacks of Albrecht et al. 2023, done by direct writes to the server's
database while the recipient is offline: replay an envelope, reorder and drop
envelopes, swap ciphertexts between conversations, forge the sender. Each test
says what the client does: detected (``DecryptionFailed``, nothing shown),
harmless (shown once, content intact) or visible to the sender (no delivered
receipt).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import delete, insert, select, update

from bisik.client import Client, DecryptionFailed, MessageReceived, ReceiptUpdated
from bisik.server.stores.schema import envelopes, messages
from tests.conftest import ClientFactory, RunningServer, next_event
from tests.integration.test_groups import device_pk


async def queue_of(server: RunningServer, client: Client) -> list[Any]:
    """The envelopes waiting for ``client``'s device, oldest first."""
    pk = await device_pk(server, client)
    async with server.services.engine.connect() as conn:
        rows = await conn.execute(
            select(envelopes).where(envelopes.c.recipient_device_pk == pk).order_by(envelopes.c.id)
        )
        return list(rows.all())


async def drained(server: RunningServer, client: Client, timeout: float = 15) -> None:
    """Wait until the client has handled (and acked) everything in its queue."""
    async with asyncio.timeout(timeout):
        while await queue_of(server, client):
            await asyncio.sleep(0.05)


async def sent(alice: Client, peer: str, texts: list[str]) -> list[str]:
    ids = []
    for text in texts:
        message = await alice.send_text(peer, text)
        await alice.wait_sent(message.id, timeout=10)
        ids.append(message.id)
    return ids


def shown(events: asyncio.Queue[Any]) -> list[MessageReceived]:
    out = []
    while not events.empty():
        event = events.get_nowait()
        if isinstance(event, MessageReceived):
            out.append(event)
    return out


async def connected(client: Client) -> None:
    await client.connect()
    await asyncio.wait_for(client.synced.wait(), 10)


async def test_replayed_envelope_is_not_shown_twice(
    make_client: ClientFactory, server: RunningServer
) -> None:
    """Harmless: a replay under a new id fails to decrypt (its Olm keys are spent)
    and is reported; the message shows once."""
    bob = await make_client("bob", connect=False)
    alice = await make_client("alice")
    await sent(alice, "bob", ["canary-replay: the code is 0451"])
    (original,) = await queue_of(server, bob)
    events = bob.subscribe()
    await connected(bob)
    await drained(server, bob)

    for _ in range(2):  # the same envelope, pushed back twice under fresh ids
        async with server.services.engine.begin() as conn:
            await conn.execute(
                insert(envelopes).values(
                    message_id=original.message_id,
                    recipient_device_pk=original.recipient_device_pk,
                    kind=original.kind,
                    type=original.type,
                    body=original.body,
                    created_at=original.created_at,
                )
            )
    bob.resync()
    await drained(server, bob)
    assert [e.message.body for e in shown(events)] == ["canary-replay: the code is 0451"]
    assert [m.body for m in bob.history("alice")] == ["canary-replay: the code is 0451"]


async def test_reordered_envelopes_show_intact_with_their_true_times(
    make_client: ClientFactory, server: RunningServer
) -> None:
    """Harmless: Olm decrypts out of order; each message shows once, intact. The
    history keeps arrival order (the server's), while ``sent_at``, inside the
    ciphertext, still tells the sender's order."""
    bob = await make_client("bob", connect=False)
    alice = await make_client("alice")
    texts = ["canary-order one", "canary-order two", "canary-order three"]
    await sent(alice, "bob", texts)
    rows = await queue_of(server, bob)
    rotated = rows[-1:] + rows[:-1]  # three, one, two
    async with server.services.engine.begin() as conn:
        for slot, row in zip(rows, rotated, strict=True):
            await conn.execute(
                update(envelopes)
                .where(envelopes.c.id == slot.id)
                .values(message_id=row.message_id, type=row.type, body=row.body)
            )
    events = bob.subscribe()
    await connected(bob)
    await drained(server, bob)
    got = [e.message for e in shown(events)]
    assert [m.body for m in got] == [texts[2], texts[0], texts[1]]
    assert [m.body for m in sorted(got, key=lambda m: m.sent_at)] == texts


async def test_dropped_envelope_is_visible_to_the_sender(
    make_client: ClientFactory, server: RunningServer
) -> None:
    """Not detectable by the recipient (Olm keeps skipped keys), but the sender sees
    that the dropped message never got a delivered receipt."""
    bob = await make_client("bob", connect=False)
    alice = await make_client("alice")
    receipts = alice.subscribe()
    texts = ["canary-drop first", "canary-drop second", "canary-drop third"]
    ids = await sent(alice, "bob", texts)
    rows = await queue_of(server, bob)
    async with server.services.engine.begin() as conn:
        await conn.execute(delete(envelopes).where(envelopes.c.id == rows[1].id))
    events = bob.subscribe()
    await connected(bob)
    await drained(server, bob)
    assert [e.message.body for e in shown(events)] == [texts[0], texts[2]]

    delivered: set[str] = set()
    async with asyncio.timeout(15):
        while not {ids[0], ids[2]} <= delivered:
            event = await next_event(receipts, ReceiptUpdated)
            if event.kind == "delivered":
                delivered.update(event.message_ids)
    assert ids[1] not in delivered
    assert not [r for r in alice.receipts(ids[1]) if r[2] == "delivered"]


async def test_ciphertexts_swapped_between_conversations_are_rejected(
    make_client: ClientFactory, server: RunningServer
) -> None:
    """Detected: each envelope is presented as coming from the other sender; Olm
    and the sender stamp inside the plaintext refuse both, nothing is shown."""
    bob = await make_client("bob", connect=False)
    alice = await make_client("alice")
    carol = await make_client("carol")
    await sent(alice, "bob", ["canary-swap from alice"])
    await sent(carol, "bob", ["canary-swap from carol"])
    from_alice, from_carol = await queue_of(server, bob)
    swaps = ((from_alice, from_carol.message_id), (from_carol, from_alice.message_id))
    async with server.services.engine.begin() as conn:
        for row, new_message in swaps:
            await conn.execute(
                update(envelopes).where(envelopes.c.id == row.id).values(message_id=new_message)
            )
    events = bob.subscribe()
    await connected(bob)
    await drained(server, bob)
    failures = []
    while not events.empty():
        event = events.get_nowait()
        assert not isinstance(event, MessageReceived), event
        if isinstance(event, DecryptionFailed):
            failures.append(event.sender)
    assert sorted(failures) == ["alice", "carol"]
    assert bob.history("alice") == [] and bob.history("carol") == []


async def test_forged_sender_is_rejected(make_client: ClientFactory, server: RunningServer) -> None:
    """Detected: the server names mallory as the sender of alice's message."""
    bob = await make_client("bob", connect=False)
    alice = await make_client("alice")
    mallory = await make_client("mallory")
    await sent(alice, "bob", ["canary-forged: only alice may say this"])
    (row,) = await queue_of(server, bob)
    async with server.services.engine.begin() as conn:
        await conn.execute(
            update(messages)
            .where(messages.c.id == row.message_id)
            .values(sender_device_pk=await device_pk(server, mallory))
        )
    events = bob.subscribe()
    await connected(bob)
    failed = await next_event(events, DecryptionFailed)
    assert (failed.sender, failed.sender_device) == ("mallory", mallory.device_id)
    await drained(server, bob)
    assert bob.history("mallory") == [] and bob.history("alice") == []
    assert not [e for e in shown(events)]
