from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bisik.server.stores.accounts import SignedKeyRow, insert_one_time_keys
from bisik.server.stores.schema import fallback_keys, one_time_keys


@dataclass(frozen=True)
class KeyCounts:
    one_time: int
    has_fallback: bool
    fallback_used: bool


@dataclass(frozen=True)
class ClaimedKeyRow:
    device_pk: int
    key: SignedKeyRow
    fallback: bool
    remaining: int


class KeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def upload(
        self,
        device_pk: int,
        one_time: Sequence[SignedKeyRow],
        fallback: SignedKeyRow | None,
    ) -> KeyCounts:
        """Add one-time keys (ignoring key ids already stored) and replace the fallback key."""
        async with self._engine.begin() as conn:
            if one_time:
                existing = set(
                    (
                        await conn.execute(
                            select(one_time_keys.c.key_id).where(
                                one_time_keys.c.device_pk == device_pk,
                                one_time_keys.c.key_id.in_([k.key_id for k in one_time]),
                            )
                        )
                    ).scalars()
                )
                fresh = {k.key_id: k for k in one_time if k.key_id not in existing}
                await insert_one_time_keys(conn, device_pk, fresh.values())
            if fallback is not None:
                await conn.execute(
                    delete(fallback_keys).where(fallback_keys.c.device_pk == device_pk)
                )
                await conn.execute(
                    insert(fallback_keys).values(
                        device_pk=device_pk,
                        key_id=fallback.key_id,
                        public_key=fallback.public_key,
                        signature=fallback.signature,
                        used=False,
                    )
                )
            return await self._counts(conn, device_pk)

    async def counts(self, device_pk: int) -> KeyCounts:
        async with self._engine.connect() as conn:
            return await self._counts(conn, device_pk)

    @staticmethod
    async def _counts(conn: AsyncConnection, device_pk: int) -> KeyCounts:
        count = (
            await conn.execute(select(func.count()).where(one_time_keys.c.device_pk == device_pk))
        ).scalar_one()
        used = (
            await conn.execute(
                select(fallback_keys.c.used).where(fallback_keys.c.device_pk == device_pk)
            )
        ).scalar_one_or_none()
        return KeyCounts(int(count), used is not None, bool(used))

    async def claim(self, device_pk: int, *, one_time: bool = True) -> ClaimedKeyRow | None:
        """Take one one-time key of a device, or its fallback key if none is left.

        With ``one_time=False`` (a claim past a rate limit) the fallback key comes
        first, and a one-time key only for a device that has no fallback key.
        A one-time key is deleted as it is handed out, in one statement; on
        PostgreSQL ``SKIP LOCKED`` lets concurrent claims take different keys
        instead of both waiting for the same row.
        """
        async with self._engine.begin() as conn:
            if one_time:
                return await self._take_one_time(conn, device_pk) or await self._take_fallback(
                    conn, device_pk
                )
            return await self._take_fallback(conn, device_pk) or await self._take_one_time(
                conn, device_pk
            )

    @staticmethod
    async def _remaining(conn: AsyncConnection, device_pk: int) -> int:
        return int(
            (
                await conn.execute(
                    select(func.count()).where(one_time_keys.c.device_pk == device_pk)
                )
            ).scalar_one()
        )

    async def _take_one_time(self, conn: AsyncConnection, device_pk: int) -> ClaimedKeyRow | None:
        oldest = (
            select(one_time_keys.c.id)
            .where(one_time_keys.c.device_pk == device_pk)
            .order_by(one_time_keys.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        row = (
            await conn.execute(
                delete(one_time_keys)
                .where(one_time_keys.c.id == oldest)
                .returning(
                    one_time_keys.c.key_id,
                    one_time_keys.c.public_key,
                    one_time_keys.c.signature,
                )
            )
        ).first()
        if row is None:
            return None
        remaining = await self._remaining(conn, device_pk)
        return ClaimedKeyRow(device_pk, SignedKeyRow(*row), False, remaining)

    async def _take_fallback(self, conn: AsyncConnection, device_pk: int) -> ClaimedKeyRow | None:
        row = (
            await conn.execute(
                update(fallback_keys)
                .where(fallback_keys.c.device_pk == device_pk)
                .values(used=True)
                .returning(
                    fallback_keys.c.key_id,
                    fallback_keys.c.public_key,
                    fallback_keys.c.signature,
                )
            )
        ).first()
        if row is None:
            return None
        remaining = await self._remaining(conn, device_pk)
        return ClaimedKeyRow(device_pk, SignedKeyRow(*row), True, remaining)
