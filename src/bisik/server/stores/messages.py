from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, exists, func, insert, select
from sqlalchemy.exc import IntegrityError

from bisik.server._db import OneHop
from bisik.server.stores._batch import Batcher
from bisik.server.stores.schema import devices, envelopes, messages, users


@dataclass(frozen=True)
class NewEnvelope:
    recipient_pk: int
    kind: str
    type: int
    body: str


@dataclass(frozen=True)
class EnvelopeRow:
    id: int
    seq: int
    recipient_pk: int
    sender: str
    sender_device: str
    kind: str
    type: int
    body: str
    ts: int
    group_id: str | None = None


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    ts: int
    duplicate: bool
    envelopes: list[EnvelopeRow]


class MessageStore:
    """The message queue: the hot path, so every method is one ``OneHop`` step."""

    def __init__(self, db: OneHop) -> None:
        self._db = db
        self._acks: Batcher[tuple[int, list[int]], tuple[int, list[int]]] = Batcher(self._ack_batch)

    async def store(
        self,
        *,
        sender_pk: int,
        sender: str,
        sender_device: str,
        client_message_id: str,
        items: Sequence[NewEnvelope],
        now: int,
        group_id: str | None = None,
        group_body: str | None = None,
        expires_at: int | None = None,
    ) -> StoredMessage:
        """Store a message and all its envelopes in one transaction.

        A group message (``group_id``) keeps its one ciphertext, ``group_body``,
        on the message row; its envelopes only address it to each device.
        A message id the sender already used is not stored again: the first
        message's sequence number comes back with ``duplicate=True``.
        """

        def write(conn: Connection) -> tuple[int, list[int]]:
            seq = conn.execute(
                insert(messages)
                .values(
                    sender_device_pk=sender_pk,
                    client_message_id=client_message_id,
                    created_at=now,
                    group_id=group_id,
                    body=group_body,
                    expires_at=expires_at,
                )
                .returning(messages.c.id)
            ).scalar_one()
            ids = (
                conn.execute(
                    insert(envelopes).returning(envelopes.c.id, sort_by_parameter_order=True),
                    [
                        {
                            "message_id": seq,
                            "recipient_device_pk": e.recipient_pk,
                            "kind": e.kind,
                            "type": e.type,
                            "body": e.body,
                            "created_at": now,
                        }
                        for e in items
                    ],
                )
                .scalars()
                .all()
            )
            return int(seq), [int(i) for i in ids]

        def first(conn: Connection) -> tuple[int, int] | None:
            row = conn.execute(
                select(messages.c.id, messages.c.created_at).where(
                    messages.c.sender_device_pk == sender_pk,
                    messages.c.client_message_id == client_message_id,
                )
            ).first()
            return None if row is None else (int(row[0]), int(row[1]))

        try:
            seq, ids = await self._db.write(write)
        except IntegrityError:
            found = await self._db.read(first)
            if found is None:
                raise
            return StoredMessage(found[0], found[1], True, [])
        rows = [
            EnvelopeRow(
                env_id,
                seq,
                e.recipient_pk,
                sender,
                sender_device,
                e.kind,
                e.type,
                group_body if group_body is not None else e.body,
                now,
                group_id,
            )
            for env_id, e in zip(ids, items, strict=True)
        ]
        return StoredMessage(seq, now, False, rows)

    async def pending(self, recipient_pk: int, after: int, limit: int) -> list[EnvelopeRow]:
        """Envelopes for a device with id > ``after``, oldest first."""

        def read(conn: Connection) -> list[EnvelopeRow]:
            rows = conn.execute(
                select(
                    envelopes.c.id,
                    envelopes.c.message_id,
                    envelopes.c.recipient_device_pk,
                    users.c.username,
                    devices.c.device_id,
                    envelopes.c.kind,
                    envelopes.c.type,
                    func.coalesce(messages.c.body, envelopes.c.body),
                    envelopes.c.created_at,
                    messages.c.group_id,
                )
                .join_from(envelopes, messages, envelopes.c.message_id == messages.c.id)
                .join(devices, messages.c.sender_device_pk == devices.c.id)
                .join(users, devices.c.user_id == users.c.id)
                .where(envelopes.c.recipient_device_pk == recipient_pk, envelopes.c.id > after)
                .order_by(envelopes.c.id)
                .limit(limit)
            ).all()
            return [EnvelopeRow(*tuple(r)) for r in rows]

        return await self._db.read(read)

    async def ack(self, recipient_pk: int, ids: Sequence[int]) -> tuple[int, list[int]]:
        """Delete acknowledged envelopes of this device.

        Returns ``(deleted, foreign)``: ``foreign`` lists ids that exist but are
        addressed to another device (nothing is deleted then). Acks from many
        devices at once are written in one transaction (see ``Batcher``).
        """
        return await self._acks.submit((recipient_pk, list(ids)))

    async def _ack_batch(self, batch: list[tuple[int, list[int]]]) -> list[tuple[int, list[int]]]:
        wanted = sorted({i for _, ids in batch for i in ids})

        def write(conn: Connection) -> list[tuple[int, list[int]]]:
            found = conn.execute(
                select(
                    envelopes.c.id, envelopes.c.recipient_device_pk, envelopes.c.message_id
                ).where(envelopes.c.id.in_(wanted))
            ).all()
            owners = {int(i): int(pk) for i, pk, _ in found}
            message_of = {int(i): int(m) for i, _, m in found}
            results: list[tuple[int, list[int]]] = []
            deletable: list[int] = []
            for recipient_pk, ids in batch:
                foreign = [i for i in ids if owners.get(i, recipient_pk) != recipient_pk]
                if foreign:
                    results.append((0, foreign))
                    continue
                mine = {i for i in ids if i in owners}
                deletable += mine
                results.append((len(mine), []))
            if deletable:
                conn.execute(delete(envelopes).where(envelopes.c.id.in_(deletable)))
                # A disappearing message is gone once every device has it.
                conn.execute(
                    delete(messages).where(
                        messages.c.id.in_({message_of[i] for i in deletable}),
                        messages.c.expires_at.is_not(None),
                        ~exists().where(envelopes.c.message_id == messages.c.id),
                    )
                )
            return results

        return await self._db.write(write)

    async def purge(self, now: int, retention_ms: int) -> tuple[int, int]:
        """Drop expired disappearing messages, and envelopes (and the message
        records kept for idempotency) older than the retention.

        Returns ``(messages, envelopes)`` deleted.
        """
        old = now - retention_ms

        def write(conn: Connection) -> tuple[int, int]:
            expired = select(messages.c.id).where(messages.c.expires_at <= now)
            dropped = conn.execute(
                delete(envelopes).where(
                    envelopes.c.message_id.in_(expired) | (envelopes.c.created_at < old)
                )
            ).rowcount
            gone = conn.execute(
                delete(messages).where(
                    (messages.c.expires_at <= now)
                    | (
                        (messages.c.created_at < old)
                        & ~exists().where(envelopes.c.message_id == messages.c.id)
                    )
                )
            ).rowcount
            return int(gone), int(dropped)

        return await self._db.write(write)
