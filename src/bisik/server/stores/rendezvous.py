from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bisik.server.stores.schema import rendezvous, rendezvous_messages


@dataclass(frozen=True)
class Channel:
    channel: str
    new_token_hash: bytes
    existing_token_hash: bytes | None
    expires_at: int


@dataclass(frozen=True)
class RendezvousMessage:
    id: int
    role: str
    body: str


class RendezvousStore:
    """Short-lived mailboxes through which a new device and an existing one pair."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, channel: str, new_token_hash: bytes, now: int, expires_at: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(rendezvous).where(rendezvous.c.expires_at < now))
            await conn.execute(
                insert(rendezvous).values(
                    channel=channel,
                    new_token_hash=new_token_hash,
                    created_at=now,
                    expires_at=expires_at,
                )
            )

    async def get(self, channel: str) -> Channel | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        rendezvous.c.channel,
                        rendezvous.c.new_token_hash,
                        rendezvous.c.existing_token_hash,
                        rendezvous.c.expires_at,
                    ).where(rendezvous.c.channel == channel)
                )
            ).first()
        return Channel(row[0], row[1], row[2], int(row[3])) if row else None

    async def claim(self, channel: str, token_hash: bytes, now: int, expires_at: int) -> bool:
        """Let the first existing device in; ``False`` if another already came."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(rendezvous)
                .where(
                    rendezvous.c.channel == channel,
                    rendezvous.c.existing_token_hash.is_(None),
                    rendezvous.c.expires_at >= now,
                )
                .values(existing_token_hash=token_hash, expires_at=expires_at)
            )
            return bool(result.rowcount)

    async def post(
        self, channel: str, role: str, body: str, now: int, max_messages: int, max_bytes: int
    ) -> int | None:
        """Append a message; ``None`` if the channel would then hold more than
        ``max_messages`` messages or ``max_bytes`` bytes (bodies are ASCII)."""
        size = len(body)
        held = (
            select(func.count()).where(rendezvous_messages.c.channel == channel).scalar_subquery()
        )
        async with self._engine.begin() as conn:
            # One statement checks and counts, and takes the channel row's write
            # lock first: concurrent writes cannot both pass the cap.
            grown = await conn.execute(
                update(rendezvous)
                .where(
                    rendezvous.c.channel == channel,
                    rendezvous.c.bytes_written + size <= max_bytes,
                    held < max_messages,
                )
                .values(bytes_written=rendezvous.c.bytes_written + size)
            )
            if not grown.rowcount:
                return None
            return int(
                (
                    await conn.execute(
                        insert(rendezvous_messages)
                        .values(channel=channel, role=role, body=body, created_at=now)
                        .returning(rendezvous_messages.c.id)
                    )
                ).scalar_one()
            )

    async def read(
        self, channel: str, role: str, after: int, limit: int
    ) -> list[RendezvousMessage]:
        """Messages written by ``role``'s peer, with id > ``after``."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        rendezvous_messages.c.id,
                        rendezvous_messages.c.role,
                        rendezvous_messages.c.body,
                    )
                    .where(
                        rendezvous_messages.c.channel == channel,
                        rendezvous_messages.c.role != role,
                        rendezvous_messages.c.id > after,
                    )
                    .order_by(rendezvous_messages.c.id)
                    .limit(limit)
                )
            ).all()
        return [RendezvousMessage(int(r[0]), r[1], r[2]) for r in rows]

    async def close(self, channel: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(rendezvous).where(rendezvous.c.channel == channel))

    async def purge(self, now: int) -> int:
        """Delete expired channels and (by cascade) their messages; returns how many."""
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(rendezvous).where(rendezvous.c.expires_at < now))
            return int(result.rowcount or 0)
