"""The group side of the local database: groups, Megolm sessions, replay
guard and messages waiting for their key. Same SQLCipher file and
transactions as ``LocalStore`` (the caller opens them)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bisik.client._store import LocalStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL DEFAULT 0,
    members TEXT NOT NULL DEFAULT '[]',
    active INTEGER NOT NULL DEFAULT 1,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS megolm_outbound (
    group_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    pickle TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    shared_with TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS megolm_sent (
    session_id TEXT NOT NULL,
    message_index INTEGER NOT NULL,
    sent_at INTEGER NOT NULL,
    PRIMARY KEY (session_id, message_index)
);
CREATE TABLE IF NOT EXISTS megolm_inbound (
    session_id TEXT PRIMARY KEY,
    group_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    owner_device TEXT NOT NULL,
    owner_ed25519 TEXT NOT NULL,
    pickle TEXT NOT NULL,
    first_index INTEGER NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS megolm_seen (
    session_id TEXT NOT NULL,
    message_index INTEGER NOT NULL,
    PRIMARY KEY (session_id, message_index)
);
CREATE TABLE IF NOT EXISTS megolm_waiting (
    envelope_key TEXT PRIMARY KEY,
    group_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    session_id TEXT NOT NULL,
    message_index INTEGER NOT NULL,
    body TEXT NOT NULL,
    server_seq INTEGER NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS megolm_waiting_session ON megolm_waiting (session_id);
"""


@dataclass(frozen=True)
class Member:
    username: str
    role: str
    added_at: int


@dataclass(frozen=True)
class LocalGroup:
    group_id: str
    name: str
    description: str
    version: int
    members: list[Member]
    active: bool

    def role_of(self, username: str) -> str | None:
        return next((m.role for m in self.members if m.username == username), None)

    def member(self, username: str) -> Member | None:
        return next((m for m in self.members if m.username == username), None)


@dataclass(frozen=True)
class Outbound:
    session_id: str
    pickle: str
    created_at: int
    shared_with: set[str]


@dataclass(frozen=True)
class Inbound:
    session_id: str
    group_id: str
    owner: str
    owner_device: str
    owner_ed25519: str
    pickle: str
    first_index: int


@dataclass(frozen=True)
class Waiting:
    envelope_key: str
    group_id: str
    sender: str
    sender_device: str
    session_id: str
    message_index: int
    body: str
    server_seq: int


def _members(data: str) -> list[Member]:
    return [
        Member(str(m["username"]), str(m["role"]), int(m["added_at"])) for m in json.loads(data)
    ]


class GroupStore:
    def __init__(self, store: LocalStore) -> None:
        self._store = store
        # Member lists as last parsed, per group: a large group's list is read
        # for every message it gets, and parsing it again costs more than the rest.
        self._parsed: dict[str, tuple[str, list[Member]]] = {}
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                store.execute(statement)

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._store.execute(sql, params)

    # -- groups -------------------------------------------------------------------

    def save_membership(
        self, group_id: str, version: int, members: list[Member], active: bool, now: int
    ) -> None:
        data = json.dumps([m.__dict__ for m in members])
        self._exec(
            "INSERT INTO groups (id, version, members, active, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET version = excluded.version, "
            "members = excluded.members, active = excluded.active, "
            "updated_at = excluded.updated_at "
            # Answers to concurrent calls arrive in any order: never go back.
            "WHERE excluded.version >= groups.version",
            (group_id, version, data, int(active), now),
        )

    def set_meta(self, group_id: str, name: str, description: str, now: int) -> None:
        self._exec(
            "INSERT INTO groups (id, name, description, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
            "description = excluded.description",
            (group_id, name, description, now),
        )

    def group(self, group_id: str) -> LocalGroup | None:
        row = self._exec(
            "SELECT id, name, description, version, members, active FROM groups WHERE id = ?",
            (group_id,),
        ).fetchone()
        return self._group(tuple(row)) if row else None

    def groups(self, *, active_only: bool = True) -> list[LocalGroup]:
        rows = self._exec(
            "SELECT id, name, description, version, members, active FROM groups "
            "WHERE active = 1 OR ? ORDER BY name, id",
            (int(not active_only),),
        ).fetchall()
        return [self._group(tuple(r)) for r in rows]

    def _group(self, row: tuple[Any, ...]) -> LocalGroup:
        group_id, data = str(row[0]), str(row[4])
        parsed = self._parsed.get(group_id)
        if parsed is None or parsed[0] != data:
            parsed = self._parsed[group_id] = (data, _members(data))
        return LocalGroup(
            group_id, str(row[1]), str(row[2]), int(row[3]), list(parsed[1]), bool(row[5])
        )

    # -- our outbound sessions ----------------------------------------------------------

    def outbound(self, group_id: str) -> Outbound | None:
        row = self._exec(
            "SELECT session_id, pickle, created_at, shared_with FROM megolm_outbound "
            "WHERE group_id = ?",
            (group_id,),
        ).fetchone()
        if row is None:
            return None
        return Outbound(str(row[0]), str(row[1]), int(row[2]), set(json.loads(row[3])))

    def save_outbound(self, group_id: str, session: Outbound) -> None:
        self._exec(
            "INSERT OR REPLACE INTO megolm_outbound "
            "(group_id, session_id, pickle, created_at, shared_with) VALUES (?, ?, ?, ?, ?)",
            (
                group_id,
                session.session_id,
                session.pickle,
                session.created_at,
                json.dumps(sorted(session.shared_with)),
            ),
        )

    def drop_outbound(self, group_id: str) -> None:
        self._exec("DELETE FROM megolm_outbound WHERE group_id = ?", (group_id,))

    def add_sent(self, session_id: str, index: int, sent_at: int) -> None:
        self._exec(
            "INSERT OR IGNORE INTO megolm_sent (session_id, message_index, sent_at) "
            "VALUES (?, ?, ?)",
            (session_id, index, sent_at),
        )

    def set_sent_at(self, session_id: str, index: int, sent_at: int) -> None:
        """The server's time of a sent message (the clock membership times use)."""
        self._exec(
            "UPDATE megolm_sent SET sent_at = ? WHERE session_id = ? AND message_index = ?",
            (sent_at, session_id, index),
        )

    def first_sent_since(self, session_id: str, since: int) -> int | None:
        """The first index of our session sent at or after ``since``."""
        row = self._exec(
            "SELECT min(message_index) FROM megolm_sent WHERE session_id = ? AND sent_at >= ?",
            (session_id, since),
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def sent_count(self, session_id: str) -> int:
        row = self._exec(
            "SELECT count(*) FROM megolm_sent WHERE session_id = ?", (session_id,)
        ).fetchone()
        return int(row[0])

    # -- inbound sessions -----------------------------------------------------------------

    def inbound(self, session_id: str) -> Inbound | None:
        row = self._exec(
            "SELECT session_id, group_id, owner, owner_device, owner_ed25519, pickle, first_index "
            "FROM megolm_inbound WHERE session_id = ?",
            (session_id,),
        ).fetchone()
        if row is None:
            return None
        return Inbound(
            str(row[0]),
            str(row[1]),
            str(row[2]),
            str(row[3]),
            str(row[4]),
            str(row[5]),
            int(row[6]),
        )

    def save_inbound(self, session: Inbound, now: int) -> None:
        self._exec(
            "INSERT OR REPLACE INTO megolm_inbound (session_id, group_id, owner, owner_device, "
            "owner_ed25519, pickle, first_index, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                session.session_id,
                session.group_id,
                session.owner,
                session.owner_device,
                session.owner_ed25519,
                session.pickle,
                session.first_index,
                now,
            ),
        )

    # -- replay guard -------------------------------------------------------------------

    def mark_seen(self, session_id: str, index: int) -> bool:
        """Record a decrypted ``(session, index)``; ``False`` if it was seen before."""
        cur = self._exec(
            "INSERT OR IGNORE INTO megolm_seen (session_id, message_index) VALUES (?, ?)",
            (session_id, index),
        )
        return bool(cur.rowcount)

    # -- messages waiting for their key -------------------------------------------------

    def add_waiting(self, item: Waiting, now: int) -> None:
        self._exec(
            "INSERT OR IGNORE INTO megolm_waiting (envelope_key, group_id, sender, sender_device, "
            "session_id, message_index, body, server_seq, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                item.envelope_key,
                item.group_id,
                item.sender,
                item.sender_device,
                item.session_id,
                item.message_index,
                item.body,
                item.server_seq,
                now,
            ),
        )

    def waiting(self, session_id: str | None = None) -> list[Waiting]:
        sql = (
            "SELECT envelope_key, group_id, sender, sender_device, session_id, message_index, "
            "body, server_seq FROM megolm_waiting"
        )
        params: tuple[Any, ...] = ()
        if session_id is not None:
            sql += " WHERE session_id = ?"
            params = (session_id,)
        rows = self._exec(sql + " ORDER BY server_seq, message_index", params).fetchall()
        return [
            Waiting(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                str(r[3]),
                str(r[4]),
                int(r[5]),
                str(r[6]),
                int(r[7]),
            )
            for r in rows
        ]

    def remove_waiting(self, envelope_key: str) -> None:
        self._exec("DELETE FROM megolm_waiting WHERE envelope_key = ?", (envelope_key,))
