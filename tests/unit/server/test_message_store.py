"""The server's message store on SQLite: envelope ids, and one bad frame in a batch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, insert, select

from bisik.server._db import OneHop, create_engine, migrate
from bisik.server.stores import MessageStore
from bisik.server.stores.messages import EnvelopeIdsNotConsecutive, NewEnvelope, NewMessage
from bisik.server.stores.schema import devices, envelopes, users


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[MessageStore, OneHop, list[int]]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'server.db'}")
    await migrate(engine)
    db = OneHop(engine)

    def people(conn: Connection) -> list[int]:
        pks = []
        for i in range(5):
            user = conn.execute(
                insert(users).values(username=f"u{i}", identity_key=f"ik{i}", created_at=0)
            ).inserted_primary_key
            assert user is not None
            device = conn.execute(
                insert(devices).values(
                    user_id=user[0],
                    device_id="d",
                    curve25519=f"c{i}",
                    ed25519=f"e{i}",
                    identity_signature="s",
                    device_signature="s",
                    created_at=0,
                )
            ).inserted_primary_key
            assert device is not None
            pks.append(int(device[0]))
        return pks

    pks = await db.write(people)
    yield MessageStore(db), db, pks
    db.close()
    await engine.dispose()


def group_message(sender: int, client_id: str, recipients: list[int]) -> NewMessage:
    return NewMessage(
        sender_pk=sender,
        sender="u0",
        sender_device="d",
        client_message_id=client_id,
        items=[NewEnvelope(pk, "megolm", 0, "") for pk in recipients],
        now=1,
        group_id="g",
        group_body="ciphertext",
    )


async def test_envelope_ids_are_the_rows_stored_for_each_device(
    store: tuple[MessageStore, OneHop, list[int]],
) -> None:
    messages, db, pks = store
    # Sends arriving together share a transaction: their rows go in as one batch.
    stored = await asyncio.gather(
        *(messages.store(group_message(pks[0], f"m{i}", pks[1:])) for i in range(3)),
        messages.store(group_message(pks[1], "direct", [pks[2]])),
    )

    def rows(conn: Connection) -> dict[int, tuple[int, int]]:
        found = conn.execute(
            select(envelopes.c.id, envelopes.c.message_id, envelopes.c.recipient_device_pk)
        )
        return {int(i): (int(m), int(pk)) for i, m, pk in found}

    in_db = await db.read(rows)
    given = {e.id: (e.seq, e.recipient_pk) for s in stored for e in s.envelopes}
    assert given == in_db and len(given) == 3 * 4 + 1


async def test_a_frame_naming_a_device_gone_fails_alone(
    store: tuple[MessageStore, OneHop, list[int]],
) -> None:
    messages, db, pks = store
    gone = max(pks) + 100  # a device deleted after its sender's frame was resolved
    good, bad = await asyncio.gather(
        messages.store(group_message(pks[0], "fine", pks[1:3])),
        messages.store(group_message(pks[0], "stale", [pks[1], gone])),
        return_exceptions=True,
    )
    assert not isinstance(good, BaseException)
    assert [e.recipient_pk for e in good.envelopes] == pks[1:3]
    assert isinstance(bad, Exception) and "FOREIGN KEY" in str(bad)

    def count(conn: Connection) -> int:
        return len(conn.execute(select(envelopes.c.id)).all())

    assert await db.read(count) == 2  # the bad frame's first row rolled back with it


async def test_envelope_ids_that_are_not_the_consecutive_run_fail_the_write_loudly(
    store: tuple[MessageStore, OneHop, list[int]],
) -> None:
    messages, db, pks = store
    await messages.store(group_message(pks[0], "first", pks[1:]))

    def sequence_behind(conn: Connection) -> None:
        # As if AUTOINCREMENT's counter no longer told where the next ids start.
        conn.exec_driver_sql("UPDATE sqlite_sequence SET seq = seq - 2 WHERE name = 'envelopes'")

    await db.write(sequence_behind)
    with pytest.raises(EnvelopeIdsNotConsecutive, match="after id 2 ended at id 6, not 4"):
        await messages.store(group_message(pks[0], "second", pks[1:3]))

    def stored(conn: Connection) -> int:
        return len(conn.execute(select(envelopes.c.id)).all())

    assert await db.read(stored) == 4  # the second message's rows rolled back
    await messages.close()
