"""The timeline's tables in the local database: messages, receipts, read
state, attachments, extras (replies, timers, view once, edits, deletion),
reactions and conversation timers. Every row comes back typed.

Writes run inside the caller's ``LocalStore.transaction()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bisik.client._models import Message
from bisik.client._store import LocalStore, key_lists

# A message's key: ``(sender, id)``.
Key = tuple[str, str]

_MESSAGE_COLUMNS = (
    "id, conversation, sender, sender_device, direction, body, sent_at, received_at, "
    "server_seq, state"
)

# Our messages to one user among some ids (``{}``: that many ``?``). Found by
# (sender, id); ``+conversation`` keeps SQLite from walking the whole
# conversation through its index instead, once per receipt.
_OUR_MESSAGES_TO = (
    "FROM messages WHERE sender = (SELECT value FROM meta WHERE key = 'username') "
    "AND direction = 'out' AND +conversation = ? AND id IN ({})"
)


def _message(row: Any) -> Message:
    return Message(
        id=str(row[0]),
        conversation=str(row[1]),
        sender=str(row[2]),
        sender_device=str(row[3]),
        direction="out" if row[4] == "out" else "in",
        body=str(row[5]),
        sent_at=int(row[6]),
        received_at=int(row[7]),
        server_seq=None if row[8] is None else int(row[8]),
        state=str(row[9]),
    )


@dataclass(frozen=True, slots=True)
class Extras:
    """What a message carries beyond its text (``message_extras``)."""

    kind: str = "text"
    reply_to: str | None = None
    expires_in: int | None = None
    expire_at: int | None = None
    hard_expire_at: int | None = None
    view_once: bool = False
    edited_at: int | None = None
    deleted_at: int | None = None
    opened_at: int | None = None


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    sender: str
    info: str  # AttachmentInfo JSON
    local_path: str | None


class TimelineStore:
    """The timeline's SQL, over the profile's ``LocalStore``."""

    def __init__(self, db: LocalStore) -> None:
        self._db = db

    def history_since(self, sent_after: int, limit: int) -> list[str]:
        """The newest ``limit`` messages sent after ``sent_after``, oldest first,
        each as its JSON object in the account transfer (protocol.md 11.5).

        SQLite writes the JSON: a backup holds up to 20,000 messages, and
        building them as Python dicts costs several times more (docs/benchmarks.md).
        """
        rows = self._db.execute(
            "SELECT json_object('id', id, 'conversation', conversation, 'sender', sender, "
            "'sender_device', sender_device, 'direction', direction, 'body', body, "
            "'sent_at', sent_at, 'received_at', received_at, 'server_seq', server_seq, "
            "'state', state) FROM messages m WHERE sent_at > ? "
            "AND state != 'pending' AND NOT EXISTS (SELECT 1 FROM message_extras x "
            "WHERE x.sender = m.sender AND x.message_id = m.id "
            "AND (x.expires_in IS NOT NULL OR x.view_once = 1 OR x.kind != 'text')) "
            "ORDER BY rowid DESC LIMIT ?",
            (sent_after, limit),
        ).fetchall()
        return [str(r[0]) for r in reversed(rows)]

    # -- messages -------------------------------------------------------------

    def insert_message(self, m: Message) -> bool:
        """Insert a message; ``False`` if ``(sender, id)`` is already stored."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO messages (id, conversation, sender, sender_device, direction, "
            "body, sent_at, received_at, server_seq, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                m.id,
                m.conversation,
                m.sender,
                m.sender_device,
                m.direction,
                m.body,
                m.sent_at,
                m.received_at,
                m.server_seq,
                m.state,
            ),
        )
        return bool(cur.rowcount)

    def mark_sent(self, sender: str, message_id: str, server_seq: int, ts: int) -> Message | None:
        """Note the server's ack; the message as it is now (``None`` if gone)."""
        rows = self._db.execute(
            "UPDATE messages SET server_seq = ?, received_at = ?, state = CASE WHEN state IN "  # noqa: S608
            "('pending', 'failed') THEN 'sent' ELSE state END WHERE sender = ? AND id = ? "
            f"RETURNING {_MESSAGE_COLUMNS}",
            (server_seq, ts, sender, message_id),
        ).fetchall()
        return _message(rows[0]) if rows else None

    def mark_failed(self, sender: str, message_id: str) -> None:
        self._db.execute(
            "UPDATE messages SET state = 'failed' WHERE sender = ? AND id = ?",
            (sender, message_id),
        )

    def message(self, sender: str, message_id: str) -> Message | None:
        row = self._db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE sender = ? AND id = ?",  # noqa: S608
            (sender, message_id),
        ).fetchone()
        return _message(row) if row else None

    def history(self, conversation: str, limit: int, before: int | None) -> list[Message]:
        """The newest ``limit`` messages of a conversation, returned oldest first."""
        rows = self._db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages "  # noqa: S608
            "WHERE conversation = ? AND rowid < ? ORDER BY rowid DESC LIMIT ?",
            (conversation, before if before is not None else 2**62, limit),
        ).fetchall()
        return [_message(r) for r in reversed(rows)]

    def conversations(self) -> list[tuple[str, int, str]]:
        """``(conversation, last rowid, last body)``, most recent first."""
        rows = self._db.execute(
            "SELECT m.conversation, m.rowid, m.body FROM messages m JOIN "
            "(SELECT conversation, max(rowid) AS last FROM messages GROUP BY conversation) g "
            "ON m.rowid = g.last ORDER BY m.rowid DESC"
        ).fetchall()
        return [(str(r[0]), int(r[1]), str(r[2])) for r in rows]

    # -- receipts and read state ---------------------------------------------------

    def add_receipt(
        self, message_ids: list[str], username: str, device_id: str, kind: str, now: int
    ) -> list[str]:
        """Record receipts for our own messages; returns the ids that were ours."""
        # States only move forward: sent -> delivered -> read.
        earlier = {"delivered": ("sent", "sent"), "read": ("sent", "delivered")}.get(kind)
        message_ids = list(dict.fromkeys(message_ids))
        found: set[str] = set()
        for chunk in key_lists(message_ids):
            mine = _OUR_MESSAGES_TO.format(", ".join("?" * len(chunk)))
            params = (f"@{username}", *chunk)
            found.update(
                str(r[0]) for r in self._db.execute(f"SELECT id {mine}", params).fetchall()
            )
            self._db.execute(
                f"INSERT OR IGNORE INTO receipts SELECT id, ?, ?, ?, ? {mine}",
                (username, device_id, kind, now, *params),
            )
            if earlier is not None:
                advance = "UPDATE messages SET state = ? WHERE state IN (?, ?) AND rowid IN "
                self._db.execute(f"{advance}(SELECT rowid {mine})", (kind, *earlier, *params))
        return [m for m in message_ids if m in found]

    def receipts(self, message_id: str) -> list[tuple[str, str, str, int]]:
        """``(username, device_id, kind, at)`` for one of our messages."""
        rows = self._db.execute(
            "SELECT username, device_id, kind, at FROM receipts WHERE message_id = ? ORDER BY at",
            (message_id,),
        ).fetchall()
        return [(str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]

    def unread(self, conversation: str) -> list[Key]:
        """``(sender, id)`` of incoming messages not yet read in a conversation."""
        rows = self._db.execute(
            "SELECT sender, id FROM messages INDEXED BY messages_unread WHERE conversation = ? "
            "AND direction = 'in' AND read_at IS NULL ORDER BY rowid",
            (conversation,),
        ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def mark_read(self, conversation: str, ids: list[str], now: int) -> list[str]:
        """Mark incoming messages read; returns those that were unread."""
        marked = []
        for message_id in dict.fromkeys(ids):
            # Found through ``messages_unread``: one lookup, however long the chat.
            senders = self._db.execute(
                "UPDATE messages SET read_at = ? WHERE conversation = ? AND id = ? "
                "AND direction = 'in' AND read_at IS NULL RETURNING sender",
                (now, conversation, message_id),
            ).fetchall()
            if senders:
                marked.append(message_id)
            for (sender,) in senders:
                # A disappearing message's timer starts when it is read.
                self._db.execute(
                    "UPDATE message_extras SET expire_at = min(? + expires_in, hard_expire_at) "
                    "WHERE sender = ? AND message_id = ? AND expires_in IS NOT NULL "
                    "AND expire_at IS NULL",
                    (now, sender, message_id),
                )
        return marked

    def mark_all_read(self, now: int) -> None:
        self._db.execute(
            "UPDATE messages SET read_at = ? WHERE direction = 'in' AND read_at IS NULL", (now,)
        )

    def unread_counts(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT conversation, count(*) FROM messages WHERE direction = 'in' "
            "AND read_at IS NULL GROUP BY conversation"
        ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def incoming_after(self, rowid: int, limit: int) -> tuple[list[Message], int]:
        """Incoming messages stored after ``rowid``, and the last one's rowid."""
        rows = self._db.execute(
            f"SELECT {_MESSAGE_COLUMNS}, rowid FROM messages "  # noqa: S608
            "WHERE direction = 'in' AND rowid > ? ORDER BY rowid LIMIT ?",
            (rowid, limit),
        ).fetchall()
        return [_message(r) for r in rows], int(rows[-1][-1]) if rows else rowid

    # -- attachments ----------------------------------------------------------------

    def put_attachment(
        self, sender: str, message_id: str, info: str, local_path: str | None
    ) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO attachments (sender, message_id, info, local_path) "
            "VALUES (?, ?, ?, ?)",
            (sender, message_id, info, local_path),
        )

    def attachment(self, message_id: str) -> StoredAttachment | None:
        row = self._db.execute(
            "SELECT sender, info, local_path FROM attachments WHERE message_id = ? LIMIT 1",
            (message_id,),
        ).fetchone()
        return StoredAttachment(str(row[0]), str(row[1]), row[2]) if row else None

    def attachment_of(self, key: Key) -> StoredAttachment | None:
        row = self._db.execute(
            "SELECT sender, info, local_path FROM attachments WHERE sender = ? AND message_id = ?",
            key,
        ).fetchone()
        return StoredAttachment(str(row[0]), str(row[1]), row[2]) if row else None

    def attachments_of(self, keys: list[Key]) -> dict[Key, str]:
        """``(sender, id) -> info JSON`` for those messages that have one."""
        return {
            (str(s), str(m)): str(info)
            for s, m, info in self._rows_for_messages(
                "SELECT sender, message_id, info FROM attachments", keys
            )
        }

    def extras_of(self, keys: list[Key]) -> dict[Key, Extras]:
        """The extras of those messages that have some."""
        return {
            (str(row[0]), str(row[1])): Extras(
                kind=str(row[2]),
                reply_to=row[3],
                expires_in=row[4],
                expire_at=row[5],
                hard_expire_at=row[6],
                view_once=bool(row[7]),
                edited_at=row[8],
                deleted_at=row[9],
            )
            for row in self._rows_for_messages(
                "SELECT sender, message_id, kind, reply_to, expires_in, expire_at, "
                "hard_expire_at, view_once, edited_at, deleted_at FROM message_extras",
                keys,
            )
        }

    def reactions_of(self, keys: list[Key]) -> dict[Key, dict[str, str]]:
        """``(sender, id) -> {reactor: emoji}`` (oldest first) for reacted-to messages."""
        found: dict[Key, dict[str, str]] = {}
        rows = self._rows_for_messages(
            "SELECT sender, message_id, reactor, emoji FROM reactions", keys, order="at"
        )
        for sender, message_id, reactor, emoji in rows:
            found.setdefault((str(sender), str(message_id)), {})[str(reactor)] = str(emoji)
        return found

    def _rows_for_messages(
        self, select: str, keys: list[Key], order: str | None = None
    ) -> list[Any]:
        """``select`` filtered to the ``(sender, message_id)`` pairs in ``keys``,
        a few hundred pairs per statement."""
        rows: list[Any] = []
        ordering = f" ORDER BY {order}" if order else ""
        for chunk in key_lists(keys):
            where = (
                "sender = ? AND message_id = ?"
                if len(chunk) == 1
                else f"(sender, message_id) IN (VALUES {', '.join(['(?, ?)'] * len(chunk))})"
            )
            params = tuple(v for key in chunk for v in key)
            rows += self._db.execute(f"{select} WHERE {where}{ordering}", params).fetchall()
        return rows

    def set_attachment_path(self, message_id: str, local_path: str) -> None:
        self._db.execute(
            "UPDATE attachments SET local_path = ? WHERE message_id = ?", (local_path, message_id)
        )

    def forget_attachment(self, message_id: str) -> None:
        self._db.execute("DELETE FROM attachments WHERE message_id = ?", (message_id,))

    # -- extras, edits, reactions, timers ---------------------------------------------

    def put_extras(self, key: Key, extras: Extras) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO message_extras (sender, message_id, kind, reply_to, "
            "expires_in, expire_at, hard_expire_at, view_once) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                *key,
                extras.kind,
                extras.reply_to,
                extras.expires_in,
                extras.expire_at,
                extras.hard_expire_at,
                int(extras.view_once),
            ),
        )

    def set_opened(self, key: Key, opened_at: int, expire_at: int) -> None:
        self._ensure_extras(key)
        self._db.execute(
            "UPDATE message_extras SET opened_at = ?, expire_at = ? "
            "WHERE sender = ? AND message_id = ?",
            (opened_at, expire_at, *key),
        )

    def set_edited(self, key: Key, edited_at: int) -> None:
        self._ensure_extras(key)
        self._db.execute(
            "UPDATE message_extras SET edited_at = ? WHERE sender = ? AND message_id = ?",
            (edited_at, *key),
        )

    def set_deleted(self, key: Key, deleted_at: int) -> None:
        """Delete a message for everyone: its text, edits, reactions and file go."""
        self._db.execute("UPDATE messages SET body = '' WHERE sender = ? AND id = ?", key)
        self._db.execute("DELETE FROM message_edits WHERE sender = ? AND message_id = ?", key)
        self._db.execute("DELETE FROM reactions WHERE sender = ? AND message_id = ?", key)
        self._db.execute("DELETE FROM attachments WHERE sender = ? AND message_id = ?", key)
        self._ensure_extras(key)
        self._db.execute(
            "UPDATE message_extras SET deleted_at = ? WHERE sender = ? AND message_id = ?",
            (deleted_at, *key),
        )

    def _ensure_extras(self, key: Key) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO message_extras (sender, message_id) VALUES (?, ?)", key
        )

    def opened_at(self, key: Key) -> int | None:
        row = self._db.execute(
            "SELECT opened_at FROM message_extras WHERE sender = ? AND message_id = ?", key
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def add_edit(self, key: Key, old_body: str, edited_at: int) -> None:
        """Keep the text an edit replaces."""
        self._db.execute(
            "INSERT OR IGNORE INTO message_edits (sender, message_id, body, edited_at) "
            "VALUES (?, ?, ?, ?)",
            (*key, old_body, edited_at),
        )

    def set_body(self, key: Key, body: str) -> None:
        self._db.execute("UPDATE messages SET body = ? WHERE sender = ? AND id = ?", (body, *key))

    def edits(self, key: Key) -> list[tuple[str, int]]:
        """Earlier texts, ``(text, replaced_at)``, oldest first."""
        rows = self._db.execute(
            "SELECT body, edited_at FROM message_edits WHERE sender = ? AND message_id = ? "
            "ORDER BY edited_at",
            key,
        ).fetchall()
        return [(str(b), int(t)) for b, t in rows]

    def reaction_at(self, key: Key, reactor: str) -> int | None:
        row = self._db.execute(
            "SELECT at FROM reactions WHERE sender = ? AND message_id = ? AND reactor = ?",
            (*key, reactor),
        ).fetchone()
        return None if row is None else int(row[0])

    def set_reaction(self, key: Key, reactor: str, emoji: str, at: int) -> None:
        """Store a reaction (an empty ``emoji`` removes it)."""
        if emoji:
            self._db.execute(
                "INSERT OR REPLACE INTO reactions (sender, message_id, reactor, emoji, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (*key, reactor, emoji, at),
            )
        else:
            self._db.execute(
                "DELETE FROM reactions WHERE sender = ? AND message_id = ? AND reactor = ?",
                (*key, reactor),
            )

    def timer(self, conversation: str) -> tuple[int | None, int] | None:
        """``(expires_in, set_at)`` of a conversation's timer, if one was ever set."""
        row = self._db.execute(
            "SELECT expires_in, set_at FROM conversation_timers WHERE conversation = ?",
            (conversation,),
        ).fetchone()
        return None if row is None else (None if row[0] is None else int(row[0]), int(row[1]))

    def set_timer(self, conversation: str, expires_in: int | None, set_by: str, at: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO conversation_timers "
            "(conversation, expires_in, set_by, set_at) VALUES (?, ?, ?, ?)",
            (conversation, expires_in, set_by, at),
        )

    def mark_note_read(self, key: Key, at: int) -> None:
        self._db.execute("UPDATE messages SET read_at = ? WHERE sender = ? AND id = ?", (at, *key))

    # -- expiry and forgetting ------------------------------------------------------------

    def due(self, now: int) -> list[tuple[str, str, str]]:
        """``(sender, id, conversation)`` of messages whose time has come."""
        rows = self._db.execute(
            "SELECT x.sender, x.message_id, m.conversation FROM message_extras x "
            "JOIN messages m ON m.sender = x.sender AND m.id = x.message_id "
            "WHERE x.expire_at <= ? OR x.hard_expire_at <= ?",
            (now, now),
        ).fetchall()
        return [(str(s), str(i), str(c)) for s, i, c in rows]

    def any_due(self, now: int) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM message_extras WHERE expire_at <= ? OR hard_expire_at <= ? LIMIT 1",
                (now, now),
            ).fetchone()
            is not None
        )

    def forget(self, key: Key, *, ours: bool) -> None:
        """Delete a message and everything about it (its outbox entry if ``ours``)."""
        for table in ("message_extras", "message_edits", "reactions", "attachments"):
            self._db.execute(
                f"DELETE FROM {table} WHERE sender = ? AND message_id = ?",  # noqa: S608
                key,
            )
        self._db.execute("DELETE FROM receipts WHERE message_id = ?", (key[1],))
        self._db.execute("DELETE FROM messages WHERE sender = ? AND id = ?", key)
        if ours:
            self._db.execute("DELETE FROM outbox WHERE message_id = ?", (key[1],))

    def checkpoint(self) -> None:
        """Move deleted rows out of the WAL into freed (zeroed: secure_delete) pages."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def sender_of(self, message_id: str) -> str | None:
        row = self._db.execute(
            "SELECT sender FROM messages WHERE id = ? LIMIT 1", (message_id,)
        ).fetchone()
        return None if row is None else str(row[0])
