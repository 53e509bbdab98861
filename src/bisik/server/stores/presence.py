from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Connection,
    Insert,
    Integer,
    Update,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
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

# A pair counts once each side has sent the other a message: one side alone
# (a stranger writing, however often) learns nothing of the other's presence.
_mutual = conversations.c.a_sent & conversations.c.b_sent

# Users who share a conversation with the user.
_partners = users.c.id.in_(
    select(conversations.c.user_b).where(conversations.c.user_a == _USER, _mutual)
) | users.c.id.in_(select(conversations.c.user_a).where(conversations.c.user_b == _USER, _mutual))

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
            # A revoked device's sockets close after its revocation cleared this.
            last_seen_at=case(
                (devices.c.revoked_at.is_(None), bindparam("now", type_=BigInteger)), else_=None
            ),
        )
        .returning(devices.c.user_id)
    )


_SOCKET_CHANGE = PerDialect(_socket_change)


def _record_sends(d: Dialect) -> Insert:
    new = d.insert(conversations)
    upsert: Insert = new.on_conflict_do_update(
        index_elements=[conversations.c.user_a, conversations.c.user_b],
        set_={
            "a_sent": conversations.c.a_sent | new.excluded.a_sent,
            "b_sent": conversations.c.b_sent | new.excluded.b_sent,
            "used_on": d.greatest(conversations.c.used_on, new.excluded.used_on),
        },
    )
    return upsert


_RECORD_SENDS = PerDialect(_record_sends)


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
    """Who shares a conversation with whom (each side has sent the other a
    message), privacy settings, and live device counts.

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

    async def record_sends(self, sender_pk: int, recipient_pks: Iterable[int], day: int) -> None:
        """Record that a user sent a stored message to each of ``recipient_pks``
        on ``day`` (the start of a UTC day, ms): their side of each pair, and the
        pair's last use."""
        rows = [
            {"user_a": min(sender_pk, r), "user_b": max(sender_pk, r), "used_on": day}
            | {"a_sent": sender_pk < r, "b_sent": sender_pk > r}
            for r in sorted(set(recipient_pks) - {sender_pk})
        ]
        if not rows:
            return

        def work(conn: Connection) -> None:
            conn.execute(_RECORD_SENDS.on(conn), rows)

        await self._db.write(work)

    async def expire_pairs(self, before: int) -> int:
        """Forget pairs last used before ``before`` (ms); how many."""

        def work(conn: Connection) -> int:
            gone = conn.execute(delete(conversations).where(conversations.c.used_on < before))
            return int(gone.rowcount)

        return await self._db.write(work)

    async def share_conversation(self, user_pk: int, other_pks: Iterable[int]) -> set[int]:
        """Which of ``other_pks`` share a conversation with ``user_pk``."""
        others = set(other_pks) - {user_pk}
        if not others:
            return set()

        def work(conn: Connection) -> set[int]:
            rows = conn.execute(
                select(conversations.c.user_a, conversations.c.user_b).where(
                    ((conversations.c.user_a == user_pk) & conversations.c.user_b.in_(others))
                    | ((conversations.c.user_b == user_pk) & conversations.c.user_a.in_(others)),
                    _mutual,
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
