from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bisik.server.stores.schema import devices, push_subscriptions, server_secrets


@dataclass(frozen=True)
class Subscription:
    device_pk: int
    endpoint: str
    p256dh: str
    auth: str


class PushStore:
    """Web Push subscriptions of devices, and the server's VAPID key."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def subscribe(
        self, device_pk: int, endpoint: str, p256dh: str, auth: str, now: int
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(push_subscriptions).where(push_subscriptions.c.device_pk == device_pk)
            )
            await conn.execute(
                insert(push_subscriptions).values(
                    device_pk=device_pk,
                    endpoint=endpoint,
                    p256dh=p256dh,
                    auth=auth,
                    created_at=now,
                    last_push_at=0,
                )
            )

    async def unsubscribe(self, device_pk: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(push_subscriptions).where(push_subscriptions.c.device_pk == device_pk)
            )

    async def due(
        self, device_pks: Iterable[int], now: int, interval_ms: int
    ) -> list[Subscription]:
        """Subscriptions of offline devices not pushed within ``interval_ms``; marks them pushed."""
        wanted = list(set(device_pks))
        if not wanted:
            return []
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        push_subscriptions.c.device_pk,
                        push_subscriptions.c.endpoint,
                        push_subscriptions.c.p256dh,
                        push_subscriptions.c.auth,
                    )
                    .join_from(
                        push_subscriptions, devices, push_subscriptions.c.device_pk == devices.c.id
                    )
                    .where(
                        push_subscriptions.c.device_pk.in_(wanted),
                        devices.c.online_count == 0,
                        push_subscriptions.c.last_push_at <= now - interval_ms,
                    )
                )
            ).all()
        if not rows:
            return []  # the common case: a read, no write transaction
        async with self._engine.begin() as conn:
            # Only the one that moves last_push_at gets to push (several processes).
            won = []
            for r in rows:
                result = await conn.execute(
                    update(push_subscriptions)
                    .where(
                        push_subscriptions.c.device_pk == r[0],
                        push_subscriptions.c.last_push_at <= now - interval_ms,
                    )
                    .values(last_push_at=now)
                )
                if result.rowcount:
                    won.append(Subscription(int(r[0]), r[1], r[2], r[3]))
        return won

    async def secret(self, name: str, make: str) -> str:
        """A server secret, created from ``make`` the first time (first writer wins)."""
        async with self._engine.connect() as conn:
            value = (
                await conn.execute(
                    select(server_secrets.c.value).where(server_secrets.c.name == name)
                )
            ).scalar_one_or_none()
        if value is not None:
            return str(value)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(server_secrets).values(name=name, value=make))
            return make
        except IntegrityError:
            return await self.secret(name, make)
