"""The client's local database: SQLCipher, keyed from the master key.

The file is unreadable without the password: SQLCipher encrypts every page
with the raw 256-bit key derived from the master key (never the password
itself), and vodozemac pickles inside it are encrypted a second time with the
pickle key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlcipher3

from bisik.client._errors import ProfileError, StoreMisuse

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


def key_lists(keys: list[_K]) -> Iterator[list[_K]]:
    """``keys`` a statement's worth at a time, each padded with its last key to
    one of a few sizes, so the statements stay in the prepared-statement cache."""
    for start in range(0, len(keys), _KEYS_PER_STATEMENT):
        chunk = keys[start : start + _KEYS_PER_STATEMENT]
        size = next(n for n in _KEY_LIST_SIZES if n >= len(chunk))
        yield chunk + [chunk[-1]] * (size - len(chunk))


# What the database raises when it cannot work right now (disk full, I/O error,
# locked): an envelope that meets one stays on the server and comes again.
# Anything else storing a message raises is about that message.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (sqlcipher3.OperationalError,)
# What is never blamed on a message's content: the database, and our own bugs.
NOT_CONTENT_ERRORS: tuple[type[Exception], ...] = (*TRANSIENT_ERRORS, StoreMisuse)

# Statements that write (``execute`` checks they run inside a transaction).
_WRITES = frozenset({"INSERT", "UPDATE", "DELETE", "REPLAC", "ALTER "})


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no event loop: plain synchronous use
        return None


# The devices of some users, and which of some users' identity keys changed.
_DEVICES_OF_USERS = (
    "SELECT username, device_id, curve25519, ed25519, identity_key FROM devices "
    "WHERE username IN ({}) ORDER BY username, device_id"
)
_CHANGED_IDENTITIES = (
    "SELECT username FROM identities WHERE changed_to IS NOT NULL AND username IN ({})"
)


# How each page of the database is authenticated. Every commit authenticates each
# page it wrote, and with SHA extensions in the CPU SHA-256 is much cheaper than
# SQLCipher 4's default SHA-512 (figures: docs/benchmarks.md). Both are
# full-strength MACs here (256-bit key).
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
        self._owner: asyncio.Task[Any] | None = None
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
                self.execute(
                    "ALTER TABLE identities ADD COLUMN verified INTEGER NOT NULL DEFAULT 0"
                )
            if version < 3:
                self.execute("ALTER TABLE messages ADD COLUMN read_at INTEGER")
            self.set_meta("schema_version", str(SCHEMA_VERSION))

    def close(self) -> None:
        self._conn.close()

    def __repr__(self) -> str:
        return "LocalStore(<encrypted>)"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction. Nested use is a savepoint inside the outer one:
        an exception undoes the inner block's writes (and propagates), the outer
        transaction decides whether anything is committed.

        Raises:
            StoreMisuse: another task's transaction is open (it awaited inside).
        """
        task = _current_task()
        if self._depth:
            if task is not self._owner:
                raise StoreMisuse("a transaction of another task is open (it awaited inside)")
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
        self._owner = task
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
            self._owner = None

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlcipher3.Cursor:
        """Run one statement (for this class and the area stores that share its
        database: ``TimelineStore``, ``GroupStore``).

        Raises:
            StoreMisuse: a write outside ``transaction()``, or from another task
                than the one whose transaction is open.
        """
        if sql[:6].upper() in _WRITES and (
            self._depth == 0 or (self._owner is not None and _current_task() is not self._owner)
        ):
            raise StoreMisuse(
                "a store write outside its task's transaction"
                if self._depth
                else "a store write outside a transaction"
            )
        return self._conn.execute(sql, params)

    # -- meta -----------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- SessionStore ---------------------------------------------------------------

    def load_account(self) -> str | None:
        row = self.execute("SELECT pickle FROM account WHERE id = 1").fetchone()
        return str(row[0]) if row else None

    def save_account(self, pickle: str) -> None:
        self.execute(
            "INSERT INTO account (id, pickle) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET pickle = excluded.pickle",
            (pickle,),
        )

    def load_sessions(self, their_key: str) -> list[str]:
        rows = self.execute(
            "SELECT pickle FROM olm_sessions WHERE their_key = ? ORDER BY used_at DESC",
            (their_key,),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def save_session(self, their_key: str, session_id: str, pickle: str) -> None:
        self.execute(
            "INSERT INTO olm_sessions (their_key, session_id, pickle, used_at) "
            "VALUES (?, ?, ?, (SELECT coalesce(max(used_at), 0) + 1 FROM olm_sessions)) "
            "ON CONFLICT (their_key, session_id) DO UPDATE SET "
            "pickle = excluded.pickle, used_at = excluded.used_at",
            (their_key, session_id, pickle),
        )

    # -- identities and devices ----------------------------------------------------

    def pinned_identity(self, username: str) -> tuple[str, str | None] | None:
        """``(pinned_key, changed_to)`` for a contact, or ``None`` if never seen."""
        row = self.execute(
            "SELECT identity_key, changed_to FROM identities WHERE username = ?", (username,)
        ).fetchone()
        return (str(row[0]), row[1]) if row else None

    def pin_identity(
        self, username: str, identity_key: str, now: int, *, verified: bool = False
    ) -> None:
        """Pin ``identity_key`` for a contact (a new key starts unverified)."""
        self.execute(
            "INSERT INTO identities (username, identity_key, first_seen, changed_to, verified) "
            "VALUES (?, ?, ?, NULL, ?) ON CONFLICT (username) DO UPDATE SET "
            "identity_key = excluded.identity_key, changed_to = NULL, "
            "verified = excluded.verified",
            (username, identity_key, now, int(verified)),
        )

    def is_verified(self, username: str) -> bool:
        row = self.execute(
            "SELECT verified FROM identities WHERE username = ?", (username,)
        ).fetchone()
        return bool(row and row[0])

    def identities(self) -> list[tuple[str, str, int, bool, str | None]]:
        """Every contact: ``(username, pinned_key, first_seen, verified, changed_to)``."""
        rows = self.execute(
            "SELECT username, identity_key, first_seen, verified, changed_to FROM identities "
            "ORDER BY username"
        ).fetchall()
        return [(str(r[0]), str(r[1]), int(r[2]), bool(r[3]), r[4]) for r in rows]

    def mark_identity_changed(self, username: str, new_key: str) -> None:
        self.execute("UPDATE identities SET changed_to = ? WHERE username = ?", (new_key, username))

    def replace_devices(self, username: str, devices: list[StoredDevice], now: int) -> None:
        self._device_memo = {k: v for k, v in self._device_memo.items() if k[0] != username}
        with self.transaction():
            self.execute("DELETE FROM devices WHERE username = ?", (username,))
            for d in devices:
                self.execute(
                    "INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?)",
                    (d.username, d.device_id, d.curve25519, d.ed25519, d.identity_key, now),
                )

    def devices_of(self, username: str) -> list[StoredDevice]:
        rows = self.execute(
            "SELECT username, device_id, curve25519, ed25519, identity_key FROM devices "
            "WHERE username = ? ORDER BY device_id",
            (username,),
        ).fetchall()
        return [StoredDevice(*r) for r in rows]

    def devices_of_many(self, usernames: list[str]) -> dict[str, list[StoredDevice]]:
        """``devices_of`` for several users, a few hundred per statement."""
        found: dict[str, list[StoredDevice]] = {u: [] for u in usernames}
        for chunk in key_lists(usernames):
            marks = ", ".join("?" * len(chunk))
            rows = self.execute(_DEVICES_OF_USERS.format(marks), tuple(chunk)).fetchall()
            for row in rows:
                found[row[0]].append(StoredDevice(*row))
        return found

    def identity_changes(self, usernames: list[str]) -> set[str]:
        """Which of these contacts have a changed identity key not yet accepted."""
        changed: set[str] = set()
        for chunk in key_lists(usernames):
            marks = ", ".join("?" * len(chunk))
            rows = self.execute(_CHANGED_IDENTITIES.format(marks), tuple(chunk)).fetchall()
            changed.update(str(row[0]) for row in rows)
        return changed

    def device(self, username: str, device_id: str) -> StoredDevice | None:
        known = self._device_memo.get((username, device_id))
        if known is not None:
            return known
        row = self.execute(
            "SELECT username, device_id, curve25519, ed25519, identity_key FROM devices "
            "WHERE username = ? AND device_id = ?",
            (username, device_id),
        ).fetchone()
        if row is None:
            return None
        device = self._device_memo[(username, device_id)] = StoredDevice(*row)
        return device

    # -- outbox ---------------------------------------------------------------

    def add_outbox(
        self,
        message_id: str,
        conversation: str,
        payload: dict[str, Any],
        now: int,
        envelopes: list[dict[str, Any]] | None = None,
    ) -> None:
        self.execute(
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
        rows = self.execute(
            "SELECT message_id, conversation, payload, envelopes FROM outbox "
            "ORDER BY rowid LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            OutboxItem(str(r[0]), str(r[1]), json.loads(r[2]), json.loads(r[3]) if r[3] else None)
            for r in rows
        ]

    def outbox_count(self) -> int:
        return int(self.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def set_outbox_envelopes(self, message_id: str, envelopes: list[dict[str, Any]] | None) -> None:
        self.execute(
            "UPDATE outbox SET envelopes = ? WHERE message_id = ?",
            (json.dumps(envelopes) if envelopes is not None else None, message_id),
        )

    def remove_outbox(self, message_id: str) -> None:
        self.execute("DELETE FROM outbox WHERE message_id = ?", (message_id,))

    # -- envelopes already handled ------------------------------------------------

    def is_processed(self, envelope_key: str) -> bool:
        row = self.execute(
            "SELECT 1 FROM processed_envelopes WHERE envelope_key = ?", (envelope_key,)
        ).fetchone()
        return row is not None

    def mark_processed(self, envelope_key: str, outcome: str, now: int) -> None:
        self.execute(
            "INSERT OR IGNORE INTO processed_envelopes (envelope_key, outcome, at) "
            "VALUES (?, ?, ?)",
            (envelope_key, outcome, now),
        )
