from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, bindparam, delete, exists, func, insert, select
from sqlalchemy.exc import IntegrityError

from bisik.server._db import OneHop
from bisik.server.stores._batch import Batcher
from bisik.server.stores._dialect import PerDialect, for_ids
from bisik.server.stores.accounts import resolve_devices
from bisik.server.stores.schema import devices, envelopes, messages, push_subscriptions, users


@dataclass(frozen=True)
class NewEnvelope:
    """One envelope to store: for a device given by its primary key, or by
    ``(username, device_id)`` (resolved inside the storing transaction)."""

    recipient: int | tuple[str, str]
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
    """What ``MessageStore.store`` did. ``unknown`` lists recipient devices that
    do not exist (or were revoked): then nothing was stored. ``push`` are the
    recipient devices with a push subscription."""

    seq: int
    ts: int
    duplicate: bool
    envelopes: list[EnvelopeRow]
    unknown: list[tuple[str, str]] = field(default_factory=list)
    push: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class NewMessage:
    """A message to store. A group message (``group_id``) keeps its one
    ciphertext, ``group_body``, on the message row; its envelopes only address
    it to each device."""

    sender_pk: int
    sender: str
    sender_device: str
    client_message_id: str
    items: Sequence[NewEnvelope]
    now: int
    group_id: str | None = None
    group_body: str | None = None
    expires_at: int | None = None


class MessageStore:
    """The message queue: the hot path, so every method is one ``OneHop`` step,
    and sends and acks from many devices are group-committed (``Batcher``)."""

    def __init__(self, db: OneHop) -> None:
        self._db = db
        self._acks: Batcher[tuple[int, list[int]], int] = Batcher(self._ack_batch)
        self._sends: Batcher[list[NewMessage], list[StoredMessage | None]] = Batcher(
            self._store_batch
        )

    async def close(self) -> None:
        """Wait for the writes already submitted (the server stops)."""
        await self._acks.close()
        await self._sends.close()

    async def store(self, message: NewMessage) -> StoredMessage:
        """Store a message and all its envelopes durably.

        A message id the sender already used is not stored again: the first
        message's sequence number comes back with ``duplicate=True``. Sends
        arriving together share one transaction (one fsync).
        """
        stored = (await self._sends.submit([message]))[0]
        assert stored is not None  # the first of its frame is always tried
        return stored

    async def store_in_order(self, frame: list[NewMessage]) -> list[StoredMessage | None]:
        """Store several messages in their order, as ``store`` does each, in one
        transaction. Order is what a conversation is made of: after a message
        naming a device that does not exist (its result's ``unknown``), none is
        stored (``None``)."""
        return await self._sends.submit(frame)

    async def _store_batch(
        self, batch: list[list[NewMessage]]
    ) -> Sequence[list[StoredMessage | None] | Exception]:
        try:
            return await self._db.write(lambda conn: _write_sends(conn, batch))
        except IntegrityError:
            if len(batch) == 1:
                raise
        # One bad frame (a device deleted meanwhile) must not fail the others.
        results: list[list[StoredMessage | None] | Exception] = []
        for frame in batch:
            try:
                results += await self._store_batch([frame])
            except IntegrityError as exc:
                results.append(exc)
        return results

    async def resolve_devices(self, refs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """``AccountStore.resolve_devices`` in one step on the message path's
        database thread (a send resolves its recipients before it is stored)."""
        if not refs:
            return {}
        return await self._db.read(lambda conn: resolve_devices(conn, refs))

    async def pending(self, recipient_pk: int, after: int, limit: int) -> list[EnvelopeRow]:
        """Envelopes for a device with id > ``after``, oldest first."""

        def read(conn: Connection) -> list[EnvelopeRow]:
            rows = conn.execute(
                _PENDING, {"recipient": recipient_pk, "after": after, "limit": limit}
            ).all()
            return [EnvelopeRow(*tuple(r)) for r in rows]

        return await self._db.read(read)

    async def ack(self, recipient_pk: int, ids: Sequence[int]) -> int:
        """Delete acknowledged envelopes of this device; how many were deleted.

        Ids not in this device's queue (taken already, never there, or addressed
        to another device) are passed over alike. Acks from many devices at once
        are written in one transaction (see ``Batcher``).
        """
        return await self._acks.submit((recipient_pk, list(ids)))

    async def _ack_batch(self, batch: list[tuple[int, list[int]]]) -> list[int]:
        wanted = sorted({i for _, ids in batch for i in ids})

        def write(conn: Connection) -> list[int]:
            found = for_ids(conn, _ACK_FIND, wanted)
            owners = {int(i): int(pk) for i, pk, _ in found}
            message_of = {int(i): int(m) for i, _, m in found}
            results: list[int] = []
            deletable: list[int] = []
            for recipient_pk, ids in batch:
                mine = {i for i in ids if owners.get(i) == recipient_pk}
                deletable += mine
                results.append(len(mine))
            gone = sorted({message_of[i] for i in deletable})
            for_ids(conn, _ACK_DELETE, deletable)
            # A disappearing message is gone once every device has it.
            for_ids(conn, _ACK_DROP_MESSAGES, gone)
            return results

        return await self._db.write(write)

    async def purge(self, now: int, retention_ms: int, dedup_ms: int) -> tuple[int, int]:
        """Drop expired disappearing messages, envelopes older than the retention,
        and the records of messages with no envelope left once older than the
        de-duplication window (nothing else reads them: they only recognise a retry).

        Returns ``(messages, envelopes)`` deleted.
        """
        old = now - retention_ms
        settled = now - dedup_ms

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
                        (messages.c.created_at < settled)
                        & ~exists().where(envelopes.c.message_id == messages.c.id)
                    )
                )
            ).rowcount
            return int(gone), int(dropped)

        return await self._db.write(write)


# The hot path's statements, built once: building one per call costs SQLAlchemy
# several times what executing it does.
_PENDING = (
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
    .where(
        envelopes.c.recipient_device_pk == bindparam("recipient"),
        envelopes.c.id > bindparam("after"),
    )
    .order_by(envelopes.c.id)
    .limit(bindparam("limit"))
)
# Statements over a list of ids (run with for_ids): on SQLite the ids go in as one
# JSON array, one statement text whatever the count (see Dialect.in_ids).
_ACK_FIND = PerDialect(
    lambda d: select(envelopes.c.id, envelopes.c.recipient_device_pk, envelopes.c.message_id).where(
        d.in_ids(envelopes.c.id)
    )
)
_ACK_DELETE = PerDialect(lambda d: delete(envelopes).where(d.in_ids(envelopes.c.id)))
_ACK_DROP_MESSAGES = PerDialect(
    lambda d: delete(messages).where(
        d.in_ids(messages.c.id),
        messages.c.expires_at.is_not(None),
        ~exists().where(envelopes.c.message_id == messages.c.id),
    )
)
_PUSHABLE = PerDialect(
    lambda d: select(push_subscriptions.c.device_pk).where(d.in_ids(push_subscriptions.c.device_pk))
)
_FIRST = select(messages.c.id, messages.c.created_at).where(
    messages.c.sender_device_pk == bindparam("sender"),
    messages.c.client_message_id == bindparam("client_id"),
)
_INSERT_ENVELOPES = insert(envelopes).returning(envelopes.c.id, sort_by_parameter_order=True)
_SQLITE_INSERT_ENVELOPE = (
    "INSERT INTO envelopes (message_id, recipient_device_pk, kind, type, body, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_SQLITE_ENVELOPE_SEQUENCE = "SELECT seq FROM sqlite_sequence WHERE name = 'envelopes'"
_UNIQUE = [messages.c.sender_device_pk, messages.c.client_message_id]
_INSERT_MESSAGE = PerDialect(
    lambda d: (
        d.insert(messages).on_conflict_do_nothing(index_elements=_UNIQUE).returning(messages.c.id)
    )
)


class EnvelopeIdsNotConsecutive(RuntimeError):
    """SQLite gave the rows of one ``executemany`` other ids than the consecutive
    run the envelope insert assumes: the ids would be misassigned, so the
    transaction fails instead."""

    def __init__(self, before: int, last: int, rows: int) -> None:
        super().__init__(
            f"{rows} envelope rows inserted after id {before} ended at id {last}, "
            f"not {before + rows}: is envelopes.id still AUTOINCREMENT, with one writer?"
        )
        self.before = before
        self.last = last
        self.rows = rows


def _insert_message(conn: Connection, send: NewMessage) -> int | None:
    """The new message's id, or ``None`` if the sender already used this id."""
    seq = conn.execute(
        _INSERT_MESSAGE.on(conn),
        {
            "sender_device_pk": send.sender_pk,
            "client_message_id": send.client_message_id,
            "created_at": send.now,
            "group_id": send.group_id,
            "body": send.group_body,
            "expires_at": send.expires_at,
        },
    ).scalar()
    return None if seq is None else int(seq)


def _insert_envelopes(conn: Connection, rows: list[dict[str, object]]) -> list[int]:
    """Insert envelope rows; their ids, in order."""
    if conn.dialect.name != "sqlite":
        return [int(i) for i in conn.execute(_INSERT_ENVELOPES, rows).scalars()]
    # SQLAlchemy's insert-many with RETURNING costs several times the insert itself (see
    # docs/benchmarks.md). SQLite has one writer at a time and AUTOINCREMENT gives
    # each row one above the largest id ever given (sqlite_sequence): the rows of
    # one executemany have consecutive ids, the last one last_insert_rowid().
    # Checked, not trusted: a change of schema or writer would misassign ids.
    before = conn.exec_driver_sql(_SQLITE_ENVELOPE_SEQUENCE).scalar()
    conn.exec_driver_sql(
        _SQLITE_INSERT_ENVELOPE,
        [
            (
                r["message_id"],
                r["recipient_device_pk"],
                r["kind"],
                r["type"],
                r["body"],
                r["created_at"],
            )
            for r in rows
        ],
    )
    last = int(conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one())
    start = int(before or 0)
    if last - start != len(rows):
        raise EnvelopeIdsNotConsecutive(start, last, len(rows))
    return list(range(start + 1, last + 1))


def _write_sends(
    conn: Connection, frames: list[list[NewMessage]]
) -> list[list[StoredMessage | None]]:
    refs = {
        e.recipient
        for frame in frames
        for send in frame
        for e in send.items
        if isinstance(e.recipient, tuple)
    }
    resolved = resolve_devices(conn, refs) if refs else {}
    out: list[list[StoredMessage | None]] = []
    rows: list[dict[str, object]] = []
    # (frame index, index in frame, send, seq, pks) of the messages stored now
    placed: list[tuple[int, int, NewMessage, int, list[int]]] = []
    for frame in frames:
        results: list[StoredMessage | None] = []
        out.append(results)
        refused = False
        for send in frame:
            if refused:
                results.append(None)  # after a refused one: not stored
                continue
            unknown = [
                e.recipient
                for e in send.items
                if isinstance(e.recipient, tuple) and e.recipient not in resolved
            ]
            if unknown:
                results.append(StoredMessage(0, send.now, False, [], unknown=unknown))
                refused = True
                continue
            seq = _insert_message(conn, send)
            if seq is None:
                first = conn.execute(
                    _FIRST, {"sender": send.sender_pk, "client_id": send.client_message_id}
                ).one()
                results.append(StoredMessage(int(first[0]), int(first[1]), True, []))
                continue
            pks = [
                resolved[e.recipient] if isinstance(e.recipient, tuple) else e.recipient
                for e in send.items
            ]
            rows += [
                {
                    "message_id": seq,
                    "recipient_device_pk": pk,
                    "kind": e.kind,
                    "type": e.type,
                    "body": e.body,
                    "created_at": send.now,
                }
                for pk, e in zip(pks, send.items, strict=True)
            ]
            placed.append((len(out) - 1, len(results), send, seq, pks))
            results.append(StoredMessage(seq, send.now, False, []))  # completed below
    ids: list[int] = []
    if rows:
        ids = _insert_envelopes(conn, rows)
    all_pks = {pk for *_, pks in placed for pk in pks}
    wanted = sorted(all_pks)
    pushable = {int(pk) for (pk,) in for_ids(conn, _PUSHABLE, wanted)}
    taken = iter(ids)
    for frame_index, index, send, seq, pks in placed:
        body_of = send.group_body
        out[frame_index][index] = StoredMessage(
            seq,
            send.now,
            False,
            [
                EnvelopeRow(
                    next(taken),
                    seq,
                    pk,
                    send.sender,
                    send.sender_device,
                    e.kind,
                    e.type,
                    body_of if body_of is not None else e.body,
                    send.now,
                    send.group_id,
                )
                for pk, e in zip(pks, send.items, strict=True)
            ],
            push=pushable.intersection(pks),
        )
    return out
