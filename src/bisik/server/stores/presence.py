from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, Integer, Update, bindparam, func, insert, or_, select, update
from sqlalchemy.sql.elements import BindParameter

from bisik.server._db import OneHop
from bisik.server.stores._batch import Batcher
from bisik.server.stores._dialect import Dialect, PerDialect
from bisik.server.stores.schema import conversations, devices, user_settings, users


@dataclass(frozen=True)
class Presence:
    online: bool
    last_seen_at: int | None
    share_presence: bool


@dataclass(frozen=True)
class Announcement:
    """A user's presence changed: what to tell which partners (those who share theirs)."""

    username: str
    online: bool
    last_seen_at: int | None
    partners: list[str]


@dataclass(frozen=True)
class _SocketChange:
    device_pk: int
    delta: int
    now: int


# Statements built once (bound by name): connect and disconnect run them for
# every socket, and building one costs more than SQLite takes to run it.
_USER: BindParameter[int] = bindparam("user_pk", type_=Integer)

# Users who share a conversation with the user.
_partners = users.c.id.in_(
    select(conversations.c.user_b).where(conversations.c.user_a == _USER)
) | users.c.id.in_(select(conversations.c.user_a).where(conversations.c.user_b == _USER))

_partner_names = select(users.c.username).where(_partners)

# Sharing is reciprocal: only partners who share their own presence see it.
_sharing_partner_names = (
    select(users.c.username)
    .select_from(users.outerjoin(user_settings, user_settings.c.user_id == users.c.id))
    .where(_partners, or_(user_settings.c.share_presence.is_(None), user_settings.c.share_presence))
)

_share_setting = select(user_settings.c.share_presence).where(user_settings.c.user_id == _USER)

# (username, share_presence or NULL, live sockets, last seen) of a user.
_state = (
    select(
        users.c.username,
        user_settings.c.share_presence,
        func.coalesce(func.sum(devices.c.online_count), 0),
        func.max(devices.c.last_seen_at),
    )
    .select_from(
        users.outerjoin(user_settings, user_settings.c.user_id == users.c.id).outerjoin(
            devices, (devices.c.user_id == users.c.id) & devices.c.revoked_at.is_(None)
        )
    )
    .where(users.c.id == _USER)
    .group_by(users.c.username, user_settings.c.share_presence)
)


def _socket_change(d: Dialect) -> Update:
    return (
        update(devices)
        .where(devices.c.id == bindparam("device_pk"))
        .values(
            online_count=d.greatest(devices.c.online_count + bindparam("delta"), 0),
            last_seen_at=bindparam("now"),
        )
        .returning(devices.c.user_id)
    )


_SOCKET_CHANGE = PerDialect(_socket_change)
_ADD_PAIRS = PerDialect(lambda d: d.insert(conversations).on_conflict_do_nothing())


def _share_presence(conn: Connection, user_pk: int) -> bool:
    value = conn.execute(_share_setting, {"user_pk": user_pk}).scalar_one_or_none()
    return True if value is None else bool(value)


@dataclass(frozen=True)
class _State:
    username: str
    presence: Presence
    sockets: int


def _state_of(conn: Connection, user_pk: int) -> _State:
    username, share, sockets, last_seen = conn.execute(_state, {"user_pk": user_pk}).one()
    presence = Presence(int(sockets) > 0, last_seen, share is None or bool(share))
    return _State(str(username), presence, int(sockets))


def _announcement(conn: Connection, user_pk: int, state: _State) -> Announcement | None:
    """What to tell whom about the user, or ``None`` if they hide their presence."""
    if not state.presence.share_presence:
        return None
    partners = conn.execute(_sharing_partner_names, {"user_pk": user_pk}).scalars()
    return Announcement(
        state.username,
        state.presence.online,
        state.presence.last_seen_at,
        [str(p) for p in partners],
    )


class PresenceStore:
    """Who shares a conversation with whom, privacy settings, and live device counts.

    Every method is one ``OneHop`` step; socket connects and disconnects, which
    come in bursts (a restarted server's clients all reconnect at once), are
    group-committed.
    """

    def __init__(self, db: OneHop) -> None:
        self._db = db
        self._changes: Batcher[_SocketChange, Announcement | None] = Batcher(self._change_batch)

    async def close(self) -> None:
        """Wait for the writes already submitted (the server stops)."""
        await self._changes.close()

    async def add_pairs(self, pairs: Iterable[tuple[int, int]], now: int) -> None:
        """Record 1:1 conversations between user primary keys (either order)."""
        rows = [
            {"user_a": a, "user_b": b, "created_at": now}
            for a, b in sorted({(min(p), max(p)) for p in pairs if p[0] != p[1]})
        ]
        if not rows:
            return

        def work(conn: Connection) -> None:
            conn.execute(_ADD_PAIRS.on(conn), rows)

        await self._db.write(work)

    async def share_conversation(self, user_pk: int, other_pks: Iterable[int]) -> set[int]:
        """Which of ``other_pks`` share a conversation with ``user_pk``."""
        others = set(other_pks) - {user_pk}
        if not others:
            return set()

        def work(conn: Connection) -> set[int]:
            rows = conn.execute(
                select(conversations.c.user_a, conversations.c.user_b).where(
                    ((conversations.c.user_a == user_pk) & conversations.c.user_b.in_(others))
                    | ((conversations.c.user_b == user_pk) & conversations.c.user_a.in_(others))
                )
            ).all()
            return {int(b) if a == user_pk else int(a) for a, b in rows}

        return await self._db.read(work)

    async def partners(self, user_pk: int) -> list[str]:
        """Usernames of everyone sharing a conversation with the user."""

        def work(conn: Connection) -> list[str]:
            rows = conn.execute(_partner_names, {"user_pk": user_pk}).scalars()
            return [str(r) for r in rows]

        return await self._db.read(work)

    async def user_pk(self, username: str) -> int | None:
        def work(conn: Connection) -> int | None:
            pk = conn.execute(
                select(users.c.id).where(users.c.username == username)
            ).scalar_one_or_none()
            return int(pk) if pk is not None else None

        return await self._db.read(work)

    async def share_presence(self, user_pk: int) -> bool:
        return await self._db.read(lambda conn: _share_presence(conn, user_pk))

    async def set_share_presence(self, user_pk: int, share: bool) -> None:
        def work(conn: Connection) -> None:
            done = conn.execute(
                update(user_settings)
                .where(user_settings.c.user_id == user_pk)
                .values(share_presence=share)
            )
            if not done.rowcount:
                conn.execute(insert(user_settings).values(user_id=user_pk, share_presence=share))

        await self._db.write(work)

    async def announcement(self, user_pk: int) -> Announcement | None:
        """The user's presence for their partners, or ``None`` if they hide it."""
        return await self._db.read(
            lambda conn: _announcement(conn, user_pk, _state_of(conn, user_pk))
        )

    async def socket_changed(self, device_pk: int, delta: int, now: int) -> Announcement | None:
        """Add ``delta`` (+1 or -1) live sockets to a device.

        Returns what to announce when that took its user online (their first
        socket) or offline (their last), else ``None``.
        """
        return await self._changes.submit(_SocketChange(device_pk, delta, now))

    async def _change_batch(self, batch: list[_SocketChange]) -> list[Announcement | None]:
        def work(conn: Connection) -> list[Announcement | None]:
            change = _SOCKET_CHANGE.on(conn)
            out: list[Announcement | None] = []
            for req in batch:
                user_pk = conn.execute(
                    change, {"device_pk": req.device_pk, "delta": req.delta, "now": req.now}
                ).scalar_one_or_none()
                if user_pk is None:
                    out.append(None)
                    continue
                # Announced when the user's first socket opened or last one closed.
                state = _state_of(conn, int(user_pk))
                crossed = state.sockets == (1 if req.delta > 0 else 0)
                out.append(_announcement(conn, int(user_pk), state) if crossed else None)
            return out

        return await self._db.write(work)

    async def presence(self, user_pk: int) -> Presence:
        return await self._db.read(lambda conn: _state_of(conn, user_pk).presence)

    async def reset_online(self) -> None:
        """At startup of a lone server process: no socket survived the restart."""
        await self._db.write(lambda conn: conn.execute(update(devices).values(online_count=0)))
