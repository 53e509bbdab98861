"""Attachment blobs: who uploads what size, how far each upload got, when it expires.

The bytes themselves live in a ``BlobBackend``; a row says how many of them are
durably stored (``received``), so an upload resumes from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bisik.server.stores.schema import blobs, users


@dataclass(frozen=True)
class BlobRow:
    id: str
    user_id: int
    device_pk: int
    size: int
    received: int
    part_size: int
    complete: bool
    backend_ref: str | None
    expires_at: int
    ttl_ms: int | None = None


_COLUMNS = (
    blobs.c.id,
    blobs.c.user_id,
    blobs.c.device_pk,
    blobs.c.size,
    blobs.c.received,
    blobs.c.part_size,
    blobs.c.complete,
    blobs.c.backend_ref,
    blobs.c.expires_at,
    blobs.c.ttl_ms,
)


def _row(r: Any) -> BlobRow:
    return BlobRow(
        str(r[0]),
        int(r[1]),
        int(r[2]),
        int(r[3]),
        int(r[4]),
        int(r[5]),
        bool(r[6]),
        None if r[7] is None else str(r[7]),
        int(r[8]),
        None if r[9] is None else int(r[9]),
    )


def _used_by(user_id: int) -> Select[tuple[Any]]:
    """Bytes reserved by an account's blobs (uploads in progress included)."""
    return select(func.coalesce(func.sum(blobs.c.size), 0)).where(blobs.c.user_id == user_id)


class BlobStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def user_pk(self, username: str) -> int:
        async with self._engine.connect() as conn:
            pk = (
                await conn.execute(select(users.c.id).where(users.c.username == username))
            ).scalar_one()
        return int(pk)

    async def usage(self, user_id: int) -> int:
        async with self._engine.connect() as conn:
            used = (await conn.execute(_used_by(user_id))).scalar_one()
        return int(used)

    async def create(
        self,
        *,
        blob_id: str,
        user_id: int,
        device_pk: int,
        size: int,
        part_size: int,
        backend_ref: str | None,
        quota: int,
        now: int,
        expires_at: int,
        ttl_ms: int | None = None,
    ) -> bool:
        """Reserve ``size`` bytes of the account's quota; ``False`` if it would overflow."""
        async with self._engine.begin() as conn:
            # Serialises concurrent reservations of one account on PostgreSQL
            # (SQLite serialises writers anyway).
            await conn.execute(select(users.c.id).where(users.c.id == user_id).with_for_update())
            used = (await conn.execute(_used_by(user_id))).scalar_one()
            if int(used) + size > quota:
                return False
            await conn.execute(
                insert(blobs).values(
                    id=blob_id,
                    user_id=user_id,
                    device_pk=device_pk,
                    size=size,
                    received=0,
                    part_size=part_size,
                    complete=False,
                    backend_ref=backend_ref,
                    created_at=now,
                    expires_at=expires_at,
                    ttl_ms=ttl_ms,
                )
            )
        return True

    async def get(self, blob_id: str) -> BlobRow | None:
        async with self._engine.connect() as conn:
            r = (await conn.execute(select(*_COLUMNS).where(blobs.c.id == blob_id))).first()
        return _row(r) if r else None

    async def advance(self, blob_id: str, old: int, new: int) -> bool:
        """Record a stored part: ``received`` moves from ``old`` to ``new`` (once)."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(blobs)
                .where(blobs.c.id == blob_id, blobs.c.received == old, blobs.c.complete.is_(False))
                .values(received=new)
            )
        return bool(result.rowcount)

    async def mark_complete(self, blob_id: str, expires_at: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(blobs)
                .where(blobs.c.id == blob_id)
                .values(complete=True, backend_ref=None, expires_at=expires_at)
            )

    async def delete(self, blob_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(blobs).where(blobs.c.id == blob_id))

    async def expired(self, now: int, limit: int) -> list[BlobRow]:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(*_COLUMNS)
                    .where(blobs.c.expires_at <= now)
                    .order_by(blobs.c.expires_at)
                    .limit(limit)
                )
            ).all()
        return [_row(r) for r in rows]
