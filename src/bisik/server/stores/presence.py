from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bisik.server.stores.schema import conversations, devices, user_settings, users


@dataclass(frozen=True)
class Presence:
    online: bool
    last_seen_at: int | None
    share_presence: bool


class PresenceStore:
    """Who shares a conversation with whom, privacy settings, and live device counts."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add_pairs(self, pairs: Iterable[tuple[int, int]], now: int) -> None:
        """Record 1:1 conversations between user primary keys (either order)."""
        for a, b in {(min(p), max(p)) for p in pairs if p[0] != p[1]}:
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(
                        insert(conversations).values(user_a=a, user_b=b, created_at=now)
                    )
            except IntegrityError:
                pass  # already known

    async def share_conversation(self, user_pk: int, other_pks: Iterable[int]) -> set[int]:
        """Which of ``other_pks`` share a conversation with ``user_pk``."""
        others = set(other_pks) - {user_pk}
        if not others:
            return set()
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(conversations.c.user_a, conversations.c.user_b).where(
                        ((conversations.c.user_a == user_pk) & conversations.c.user_b.in_(others))
                        | ((conversations.c.user_b == user_pk) & conversations.c.user_a.in_(others))
                    )
                )
            ).all()
        return {b if a == user_pk else a for a, b in rows}

    async def partners(self, user_pk: int) -> list[str]:
        """Usernames of everyone sharing a conversation with the user."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(users.c.username).where(
                        users.c.id.in_(
                            select(conversations.c.user_b).where(conversations.c.user_a == user_pk)
                        )
                        | users.c.id.in_(
                            select(conversations.c.user_a).where(conversations.c.user_b == user_pk)
                        )
                    )
                )
            ).scalars()
            return list(rows)

    async def user_pk(self, username: str) -> int | None:
        async with self._engine.connect() as conn:
            pk = (
                await conn.execute(select(users.c.id).where(users.c.username == username))
            ).scalar_one_or_none()
        return int(pk) if pk is not None else None

    async def share_presence(self, user_pk: int) -> bool:
        async with self._engine.connect() as conn:
            value = (
                await conn.execute(
                    select(user_settings.c.share_presence).where(user_settings.c.user_id == user_pk)
                )
            ).scalar_one_or_none()
        return True if value is None else bool(value)

    async def set_share_presence(self, user_pk: int, share: bool) -> None:
        async with self._engine.begin() as conn:
            done = await conn.execute(
                update(user_settings)
                .where(user_settings.c.user_id == user_pk)
                .values(share_presence=share)
            )
            if not done.rowcount:
                await conn.execute(
                    insert(user_settings).values(user_id=user_pk, share_presence=share)
                )

    async def device_online(self, device_pk: int, delta: int, now: int) -> int:
        """Add ``delta`` live sockets to a device; returns the user's live sockets after."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(devices)
                .where(devices.c.id == device_pk)
                .values(
                    online_count=func.max(devices.c.online_count + delta, 0)
                    if conn.dialect.name == "sqlite"
                    else func.greatest(devices.c.online_count + delta, 0),
                    last_seen_at=now,
                )
            )
            user_pk = select(devices.c.user_id).where(devices.c.id == device_pk).scalar_subquery()
            total = (
                await conn.execute(
                    select(func.coalesce(func.sum(devices.c.online_count), 0)).where(
                        devices.c.user_id == user_pk, devices.c.revoked_at.is_(None)
                    )
                )
            ).scalar_one()
        return int(total)

    async def presence(self, user_pk: int) -> Presence:
        async with self._engine.connect() as conn:
            online, last_seen = (
                await conn.execute(
                    select(
                        func.coalesce(func.sum(devices.c.online_count), 0),
                        func.max(devices.c.last_seen_at),
                    ).where(devices.c.user_id == user_pk, devices.c.revoked_at.is_(None))
                )
            ).one()
        return Presence(int(online) > 0, last_seen, await self.share_presence(user_pk))

    async def reset_online(self) -> None:
        """At startup of a lone server process: no socket survived the restart."""
        async with self._engine.begin() as conn:
            await conn.execute(update(devices).values(online_count=0))
