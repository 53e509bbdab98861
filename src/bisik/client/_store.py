"""The client's local database: SQLCipher, keyed from the master key.

The file is unreadable without the password: SQLCipher encrypts every page
with the raw 256-bit key derived from the master key (never the password
itself), and vodozemac pickles inside it are encrypted a second time with the
pickle key.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlcipher3

from bisik.client._errors import ProfileError
from bisik.client._models import Message

SCHEMA_VERSION = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY CHECK (id = 1), pickle TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS olm_sessions (
    their_key TEXT NOT NULL,
    session_id TEXT NOT NULL,
    pickle TEXT NOT NULL,
    used_at INTEGER NOT NULL,
    PRIMARY KEY (their_key, session_id)
);
CREATE TABLE IF NOT EXISTS identities (
    username TEXT PRIMARY KEY,
    identity_key TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    changed_to TEXT,
    verified INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS devices (
    username TEXT NOT NULL,
    device_id TEXT NOT NULL,
    curve25519 TEXT NOT NULL,
    ed25519 TEXT NOT NULL,
    identity_key TEXT NOT NULL,
    fetched_at INTEGER NOT NULL,
    PRIMARY KEY (username, device_id)
);
CREATE INDEX IF NOT EXISTS devices_curve ON devices (curve25519);
CREATE TABLE IF NOT EXISTS messages (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    conversation TEXT NOT NULL,
    sender TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    body TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    server_seq INTEGER,
    state TEXT NOT NULL,
    read_at INTEGER,
    UNIQUE (sender, id)
);
CREATE INDEX IF NOT EXISTS messages_conversation ON messages (conversation, rowid);
-- Only incoming messages not read yet: marking read finds each by id without
-- walking its conversation.
CREATE INDEX IF NOT EXISTS messages_unread ON messages (conversation, id)
    WHERE direction = 'in' AND read_at IS NULL;
CREATE TABLE IF NOT EXISTS outbox (
    message_id TEXT PRIMARY KEY,
    conversation TEXT NOT NULL,
    payload TEXT NOT NULL,
    envelopes TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    message_id TEXT NOT NULL,
    username TEXT NOT NULL,
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (message_id, username, device_id, kind)
);
-- v5: attachments of messages (the E2EE metadata, with the file key) and
-- where each was saved on this device.
CREATE TABLE IF NOT EXISTS attachments (
    sender TEXT NOT NULL,
    message_id TEXT NOT NULL,
    info TEXT NOT NULL,
    local_path TEXT,
    PRIMARY KEY (sender, message_id)
);
CREATE INDEX IF NOT EXISTS attachments_message ON attachments (message_id);
-- Disappearing messages and message actions (reply, edit, delete, reactions).
CREATE TABLE IF NOT EXISTS message_extras (
    sender TEXT NOT NULL,
    message_id TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'text',
    reply_to TEXT,
    expires_in INTEGER,
    expire_at INTEGER,
    hard_expire_at INTEGER,
    view_once INTEGER NOT NULL DEFAULT 0,
    edited_at INTEGER,
    deleted_at INTEGER,
    opened_at INTEGER,
    PRIMARY KEY (sender, message_id)
);
CREATE INDEX IF NOT EXISTS message_extras_expire ON message_extras (expire_at);
CREATE INDEX IF NOT EXISTS message_extras_hard ON message_extras (hard_expire_at);
CREATE TABLE IF NOT EXISTS message_edits (
    sender TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    edited_at INTEGER NOT NULL,
    PRIMARY KEY (sender, message_id, edited_at)
);
CREATE TABLE IF NOT EXISTS reactions (
    sender TEXT NOT NULL,
    message_id TEXT NOT NULL,
    reactor TEXT NOT NULL,
    emoji TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (sender, message_id, reactor)
);
CREATE TABLE IF NOT EXISTS conversation_timers (
    conversation TEXT PRIMARY KEY,
    expires_in INTEGER,
    set_by TEXT NOT NULL,
    set_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS processed_envelopes (
    envelope_key TEXT PRIMARY KEY,
    outcome TEXT NOT NULL,
    at INTEGER NOT NULL
);
"""


# Keys (message ids, or (sender, message_id) pairs) bound in one statement at most.
_KEYS_PER_STATEMENT = 400
_KEY_LIST_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, _KEYS_PER_STATEMENT)
_K = TypeVar("_K")


def _key_lists(keys: list[_K]) -> Iterator[list[_K]]:
    """``keys`` a statement's worth at a time, each padded with its last key to
    one of a few sizes, so the statements stay in the prepared-statement cache."""
    for start in range(0, len(keys), _KEYS_PER_STATEMENT):
        chunk = keys[start : start + _KEYS_PER_STATEMENT]
        size = next(n for n in _KEY_LIST_SIZES if n >= len(chunk))
        yield chunk + [chunk[-1]] * (size - len(chunk))


# Our messages to one user among some ids (``{}``: that many ``?``). Found by
# (sender, id); ``+conversation`` keeps SQLite from walking the whole
# conversation through its index instead, once per receipt.
_OUR_MESSAGES_TO = (
    "FROM messages WHERE sender = (SELECT value FROM meta WHERE key = 'username') "
    "AND direction = 'out' AND +conversation = ? AND id IN ({})"
)

# The devices of some users, and which of some users' identity keys changed.
_DEVICES_OF_USERS = (
    "SELECT username, device_id, curve25519, ed25519, identity_key FROM devices "
    "WHERE username IN ({}) ORDER BY username, device_id"
)
_CHANGED_IDENTITIES = (
    "SELECT username FROM identities WHERE changed_to IS NOT NULL AND username IN ({})"
)


# How each page of the database is authenticated. Every commit encrypts and
# authenticates each page it wrote, and with SHA extensions in the CPU (x86 since
# ~2017, ARMv8) SHA-256 is about 2.5x cheaper than SQLCipher 4's default SHA-512:
# a fifth of a commit's CPU. Both are full-strength MACs here (256-bit key).
_PAGE_HMAC = "HMAC_SHA256"
_LEGACY_PAGE_HMAC = "HMAC_SHA512"


def _connect(path: Path, key: bytes, page_hmac: str) -> sqlcipher3.Connection | None:
    """The database opened with ``key`` and that page MAC; ``None`` if its
    pages do not verify that way."""
    # Room for every statement shape in the prepared-statement cache (the key
    # lists below come in a few sizes each).
    conn = sqlcipher3.connect(
        str(path), isolation_level=None, check_same_thread=False, cached_statements=512
    )
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    conn.execute(f"PRAGMA cipher_hmac_algorithm = {page_hmac}")
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlcipher3.DatabaseError:
        conn.close()
        return None
    return conn


@dataclass(frozen=True)
class StoredDevice:
    username: str
    device_id: str
    curve25519: str
    ed25519: str
    identity_key: str


@dataclass(frozen=True)
class OutboxItem:
    message_id: str
    conversation: str
    payload: dict[str, Any]
    envelopes: list[dict[str, Any]] | None


class LocalStore:
    """Synchronous SQLCipher store; also the ``SessionStore`` of the Olm machine."""

    def __init__(self, conn: sqlcipher3.Connection) -> None:
        self._conn = conn
        self._depth = 0
        # Contacts' devices as read (every envelope names its sender's); only
        # ``replace_devices`` writes them, and a rollback empties the memo.
        self._device_memo: dict[tuple[str, str], StoredDevice] = {}

    @classmethod
    def open(cls, path: Path, key: bytes) -> LocalStore:
        """Open (or create) the database with a raw 32-byte key.

        Raises:
            ProfileError: if the key does not open the file.
        """
        # A new database authenticates its pages with HMAC-SHA256; one made
        # before (SQLCipher 4's default HMAC-SHA512) keeps its format.
        formats = (_PAGE_HMAC, _LEGACY_PAGE_HMAC) if path.exists() else (_PAGE_HMAC,)
        for page_hmac in formats:
            conn = _connect(path, key, page_hmac)
            if conn is not None:
                break
        else:
            raise ProfileError("the local database does not open with this key")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")
        conn.executescript(_SCHEMA)
        store = cls(conn)
        store._migrate()
        return store

    def _migrate(self) -> None:
        version = int(self.get_meta("schema_version") or SCHEMA_VERSION)
        with self.transaction():
            if version < 2:
                self._exec("ALTER TABLE identities ADD COLUMN verified INTEGER NOT NULL DEFAULT 0")
            if version < 3:
                self._exec("ALTER TABLE messages ADD COLUMN read_at INTEGER")
            self.set_meta("schema_version", str(SCHEMA_VERSION))

    def close(self) -> None:
        self._conn.close()

    def __repr__(self) -> str:
        return "LocalStore(<encrypted>)"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction. Nested use is a savepoint inside the outer one:
        an exception undoes the inner block's writes (and propagates), the outer
        transaction decides whether anything is committed."""
        if self._depth:
            savepoint = f"sp{self._depth}"
            self._conn.execute(f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._conn.execute(f"ROLLBACK TO {savepoint}")
                self._device_memo.clear()
                raise
            finally:
                self._depth -= 1
                self._conn.execute(f"RELEASE {savepoint}")
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            self._device_memo.clear()
            raise
        else:
            self._conn.execute("COMMIT")
        finally:
            self._depth = 0

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> sqlcipher3.Cursor:
        return self._conn.execute(sql, params)

    # -- meta -----------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._exec("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._exec(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- SessionStore ---------------------------------------------------------------

    def load_account(self) -> str | None:
        row = self._exec("SELECT pickle FROM account WHERE id = 1").fetchone()
        return str(row[0]) if row else None

    def save_account(self, pickle: str) -> None:
        self._exec(
            "INSERT INTO account (id, pickle) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET pickle = excluded.pickle",
            (pickle,),
        )

    def load_sessions(self, their_key: str) -> list[str]:
        rows = self._exec(
            "SELECT pickle FROM olm_sessions WHERE their_key = ? ORDER BY used_at DESC",
            (their_key,),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def save_session(self, their_key: str, session_id: str, pickle: str) -> None:
        self._exec(
            "INSERT INTO olm_sessions (their_key, session_id, pickle, used_at) "
            "VALUES (?, ?, ?, (SELECT coalesce(max(used_at), 0) + 1 FROM olm_sessions)) "
            "ON CONFLICT (their_key, session_id) DO UPDATE SET "
            "pickle = excluded.pickle, used_at = excluded.used_at",
            (their_key, session_id, pickle),
        )

    # -- identities and devices ----------------------------------------------------

    def pinned_identity(self, username: str) -> tuple[str, str | None] | None:
        """``(pinned_key, changed_to)`` for a contact, or ``None`` if never seen."""
        row = self._exec(
            "SELECT identity_key, changed_to FROM identities WHERE username = ?", (username,)
        ).fetchone()
        return (str(row[0]), row[1]) if row else None

    def pin_identity(
        self, username: str, identity_key: str, now: int, *, verified: bool = False
    ) -> None:
        """Pin ``identity_key`` for a contact (a new key starts unverified)."""
        self._exec(
            "INSERT INTO identities (username, identity_key, first_seen, changed_to, verified) "
            "VALUES (?, ?, ?, NULL, ?) ON CONFLICT (username) DO UPDATE SET "
            "identity_key = excluded.identity_key, changed_to = NULL, "
            "verified = excluded.verified",
            (username, identity_key, now, int(verified)),
        )

    def is_verified(self, username: str) -> bool:
        row = self._exec(
            "SELECT verified FROM identities WHERE username = ?", (username,)
        ).fetchone()
        return bool(row and row[0])

    def identities(self) -> list[tuple[str, str, int, bool, str | None]]:
        """Every contact: ``(username, pinned_key, first_seen, verified, changed_to)``."""
        rows = self._exec(
            "SELECT username, identity_key, first_seen, verified, changed_to FROM identities "
            "ORDER BY username"
        ).fetchall()
        return [(str(r[0]), str(r[1]), int(r[2]), bool(r[3]), r[4]) for r in rows]

    def history_since(self, sent_after: int, limit: int) -> list[str]:
        """The newest ``limit`` messages sent after ``sent_after``, oldest first,
        each as its JSON object in the account transfer (protocol.md 11.5).

        SQLite writes the JSON: a backup holds up to 20,000 messages, and
        building them as Python dicts and encoding those took four times as long.
        """
        rows = self._exec(
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

    def mark_identity_changed(self, username: str, new_key: str) -> None:
        self._exec("UPDATE identities SET changed_to = ? WHERE username = ?", (new_key, username))

    def replace_devices(self, username: str, devices: list[StoredDevice], now: int) -> None:
        self._device_memo = {k: v for k, v in self._device_memo.items() if k[0] != username}
        with self.transaction():
            self._exec("DELETE FROM devices WHERE username = ?", (username,))
            for d in devices:
                self._exec(
                    "INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?)",
                    (d.username, d.device_id, d.curve25519, d.ed25519, d.identity_key, now),
                )

    def devices_of(self, username: str) -> list[StoredDevice]:
        rows = self._exec(
            "SELECT username, device_id, curve25519, ed25519, identity_key FROM devices "
            "WHERE username = ? ORDER BY device_id",
            (username,),
        ).fetchall()
        return [StoredDevice(*r) for r in rows]

    def devices_of_many(self, usernames: list[str]) -> dict[str, list[StoredDevice]]:
        """``devices_of`` for several users, a few hundred per statement."""
        found: dict[str, list[StoredDevice]] = {u: [] for u in usernames}
        for chunk in _key_lists(usernames):
            marks = ", ".join("?" * len(chunk))
            rows = self._exec(_DEVICES_OF_USERS.format(marks), tuple(chunk)).fetchall()
            for row in rows:
                found[row[0]].append(StoredDevice(*row))
        return found

    def identity_changes(self, usernames: list[str]) -> set[str]:
        """Which of these contacts have a changed identity key not yet accepted."""
        changed: set[str] = set()
        for chunk in _key_lists(usernames):
            marks = ", ".join("?" * len(chunk))
            rows = self._exec(_CHANGED_IDENTITIES.format(marks), tuple(chunk)).fetchall()
            changed.update(str(row[0]) for row in rows)
        return changed

    def device(self, username: str, device_id: str) -> StoredDevice | None:
        known = self._device_memo.get((username, device_id))
        if known is not None:
            return known
        row = self._exec(
            "SELECT username, device_id, curve25519, ed25519, identity_key FROM devices "
            "WHERE username = ? AND device_id = ?",
            (username, device_id),
        ).fetchone()
        if row is None:
            return None
        device = self._device_memo[(username, device_id)] = StoredDevice(*row)
        return device

    # -- messages -------------------------------------------------------------

    def insert_message(self, m: Message) -> bool:
        """Insert a message; ``False`` if ``(sender, id)`` is already stored."""
        cur = self._exec(
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

    def mark_sent(
        self, sender: str, message_id: str, server_seq: int, ts: int
    ) -> tuple[Any, ...] | None:
        """Note the server's ack; the message as it is now (``None`` if gone)."""
        rows = self._exec(
            "UPDATE messages SET server_seq = ?, received_at = ?, state = CASE WHEN state IN "
            "('pending', 'failed') THEN 'sent' ELSE state END WHERE sender = ? AND id = ? "
            "RETURNING id, conversation, sender, sender_device, direction, body, sent_at, "
            "received_at, server_seq, state",
            (server_seq, ts, sender, message_id),
        ).fetchall()
        return tuple(rows[0]) if rows else None

    def mark_failed(self, sender: str, message_id: str) -> None:
        self._exec(
            "UPDATE messages SET state = 'failed' WHERE sender = ? AND id = ?",
            (sender, message_id),
        )

    def message(self, sender: str, message_id: str) -> tuple[Any, ...] | None:
        row = self._exec(
            "SELECT id, conversation, sender, sender_device, direction, body, sent_at, "
            "received_at, server_seq, state FROM messages WHERE sender = ? AND id = ?",
            (sender, message_id),
        ).fetchone()
        return tuple(row) if row else None

    def history(self, conversation: str, limit: int, before: int | None) -> list[tuple[Any, ...]]:
        """The newest ``limit`` messages of a conversation, returned oldest first."""
        rows = self._exec(
            "SELECT id, conversation, sender, sender_device, direction, body, sent_at, "
            "received_at, server_seq, state, rowid FROM messages "
            "WHERE conversation = ? AND rowid < ? ORDER BY rowid DESC LIMIT ?",
            (conversation, before if before is not None else 2**62, limit),
        ).fetchall()
        return [tuple(r) for r in reversed(rows)]

    def conversations(self) -> list[tuple[str, int, str]]:
        """``(conversation, last rowid, last body)``, most recent first."""
        rows = self._exec(
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
        for chunk in _key_lists(message_ids):
            mine = _OUR_MESSAGES_TO.format(", ".join("?" * len(chunk)))
            params = (f"@{username}", *chunk)
            found.update(str(r[0]) for r in self._exec(f"SELECT id {mine}", params).fetchall())
            self._exec(
                f"INSERT OR IGNORE INTO receipts SELECT id, ?, ?, ?, ? {mine}",
                (username, device_id, kind, now, *params),
            )
            if earlier is not None:
                advance = "UPDATE messages SET state = ? WHERE state IN (?, ?) AND rowid IN "
                self._exec(f"{advance}(SELECT rowid {mine})", (kind, *earlier, *params))
        return [m for m in message_ids if m in found]

    def receipts(self, message_id: str) -> list[tuple[str, str, str, int]]:
        """``(username, device_id, kind, at)`` for one of our messages."""
        rows = self._exec(
            "SELECT username, device_id, kind, at FROM receipts WHERE message_id = ? ORDER BY at",
            (message_id,),
        ).fetchall()
        return [(str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]

    def unread(self, conversation: str) -> list[tuple[str, str]]:
        """``(sender, id)`` of incoming messages not yet read in a conversation."""
        rows = self._exec(
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
            senders = self._exec(
                "UPDATE messages SET read_at = ? WHERE conversation = ? AND id = ? "
                "AND direction = 'in' AND read_at IS NULL RETURNING sender",
                (now, conversation, message_id),
            ).fetchall()
            if senders:
                marked.append(message_id)
            for (sender,) in senders:
                # A disappearing message's timer starts when it is read.
                self._exec(
                    "UPDATE message_extras SET expire_at = min(? + expires_in, hard_expire_at) "
                    "WHERE sender = ? AND message_id = ? AND expires_in IS NOT NULL "
                    "AND expire_at IS NULL",
                    (now, sender, message_id),
                )
        return marked

    def mark_all_read(self, now: int) -> None:
        self._exec(
            "UPDATE messages SET read_at = ? WHERE direction = 'in' AND read_at IS NULL", (now,)
        )

    def unread_counts(self) -> dict[str, int]:
        rows = self._exec(
            "SELECT conversation, count(*) FROM messages WHERE direction = 'in' "
            "AND read_at IS NULL GROUP BY conversation"
        ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    # -- outbox ---------------------------------------------------------------

    def add_outbox(
        self,
        message_id: str,
        conversation: str,
        payload: dict[str, Any],
        now: int,
        envelopes: list[dict[str, Any]] | None = None,
    ) -> None:
        self._exec(
            "INSERT INTO outbox (message_id, conversation, payload, envelopes, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                message_id,
                conversation,
                json.dumps(payload),
                json.dumps(envelopes) if envelopes is not None else None,
                now,
            ),
        )

    def outbox(self, limit: int = -1) -> list[OutboxItem]:
        """The outbox in the order it was filled (rowid: two items queued in the
        same millisecond keep their order too)."""
        rows = self._exec(
            "SELECT message_id, conversation, payload, envelopes FROM outbox "
            "ORDER BY rowid LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            OutboxItem(str(r[0]), str(r[1]), json.loads(r[2]), json.loads(r[3]) if r[3] else None)
            for r in rows
        ]

    def outbox_count(self) -> int:
        return int(self._exec("SELECT count(*) FROM outbox").fetchone()[0])

    def set_outbox_envelopes(self, message_id: str, envelopes: list[dict[str, Any]] | None) -> None:
        self._exec(
            "UPDATE outbox SET envelopes = ? WHERE message_id = ?",
            (json.dumps(envelopes) if envelopes is not None else None, message_id),
        )

    def remove_outbox(self, message_id: str) -> None:
        self._exec("DELETE FROM outbox WHERE message_id = ?", (message_id,))

    # -- envelopes already handled ------------------------------------------------

    def is_processed(self, envelope_key: str) -> bool:
        row = self._exec(
            "SELECT 1 FROM processed_envelopes WHERE envelope_key = ?", (envelope_key,)
        ).fetchone()
        return row is not None

    def mark_processed(self, envelope_key: str, outcome: str, now: int) -> None:
        self._exec(
            "INSERT OR IGNORE INTO processed_envelopes (envelope_key, outcome, at) "
            "VALUES (?, ?, ?)",
            (envelope_key, outcome, now),
        )

    def incoming_after(self, rowid: int, limit: int) -> list[tuple[Any, ...]]:
        """Incoming messages stored after ``rowid`` (the last column is the rowid)."""
        rows = self._exec(
            "SELECT id, conversation, sender, sender_device, direction, body, sent_at, "
            "received_at, server_seq, state, rowid FROM messages "
            "WHERE direction = 'in' AND rowid > ? ORDER BY rowid LIMIT ?",
            (rowid, limit),
        ).fetchall()
        return [tuple(r) for r in rows]

    # -- attachments ----------------------------------------------------------------

    def put_attachment(
        self, sender: str, message_id: str, info: str, local_path: str | None
    ) -> None:
        self._exec(
            "INSERT OR IGNORE INTO attachments (sender, message_id, info, local_path) "
            "VALUES (?, ?, ?, ?)",
            (sender, message_id, info, local_path),
        )

    def attachment(self, message_id: str) -> tuple[str, str | None] | None:
        """``(info JSON, local path)`` of a message's attachment."""
        row = self._exec(
            "SELECT info, local_path FROM attachments WHERE message_id = ? LIMIT 1",
            (message_id,),
        ).fetchone()
        return (str(row[0]), row[1]) if row else None

    def attachment_owner(self, message_id: str) -> str | None:
        row = self._exec(
            "SELECT sender FROM attachments WHERE message_id = ? LIMIT 1", (message_id,)
        ).fetchone()
        return str(row[0]) if row else None

    def attachments_of(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """``(sender, id) -> info JSON`` for those messages that have one."""
        return {
            (str(s), str(m)): str(info)
            for s, m, info in self._rows_for_messages(
                "SELECT sender, message_id, info FROM attachments", keys
            )
        }

    def extras_of(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[Any, ...]]:
        """``(sender, id) -> (kind, reply_to, expires_in, expire_at, hard_expire_at,
        view_once, edited_at, deleted_at)`` for those messages that have extras."""
        return {
            (str(row[0]), str(row[1])): tuple(row[2:])
            for row in self._rows_for_messages(
                "SELECT sender, message_id, kind, reply_to, expires_in, expire_at, "
                "hard_expire_at, view_once, edited_at, deleted_at FROM message_extras",
                keys,
            )
        }

    def reactions_of(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
        """``(sender, id) -> {reactor: emoji}`` (oldest first) for reacted-to messages."""
        found: dict[tuple[str, str], dict[str, str]] = {}
        rows = self._rows_for_messages(
            "SELECT sender, message_id, reactor, emoji FROM reactions", keys, order="at"
        )
        for sender, message_id, reactor, emoji in rows:
            found.setdefault((str(sender), str(message_id)), {})[str(reactor)] = str(emoji)
        return found

    def _rows_for_messages(
        self, select: str, keys: list[tuple[str, str]], order: str | None = None
    ) -> list[Any]:
        """``select`` filtered to the ``(sender, message_id)`` pairs in ``keys``,
        a few hundred pairs per statement."""
        rows: list[Any] = []
        ordering = f" ORDER BY {order}" if order else ""
        for chunk in _key_lists(keys):
            where = (
                "sender = ? AND message_id = ?"
                if len(chunk) == 1
                else f"(sender, message_id) IN (VALUES {', '.join(['(?, ?)'] * len(chunk))})"
            )
            params = tuple(v for key in chunk for v in key)
            rows += self._exec(f"{select} WHERE {where}{ordering}", params).fetchall()
        return rows

    def set_attachment_path(self, message_id: str, local_path: str) -> None:
        self._exec(
            "UPDATE attachments SET local_path = ? WHERE message_id = ?", (local_path, message_id)
        )

    def forget_attachment(self, message_id: str) -> None:
        self._exec("DELETE FROM attachments WHERE message_id = ?", (message_id,))
