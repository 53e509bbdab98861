from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bisik.server.stores.schema import backup_challenges, backups, user_pk_of, users


@dataclass(frozen=True)
class Backup:
    auth_key: str
    version: int
    ciphertext: str


class BackupStore:
    """One encrypted account backup per user; the server cannot read it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def put(self, username: str, auth_key: str, ciphertext: str, now: int) -> int:
        """Store a backup; the server numbers versions (increasing), not the client's clock."""
        async with self._engine.begin() as conn:
            user_pk = (
                await conn.execute(select(users.c.id).where(users.c.username == username))
            ).scalar_one()
            old = (
                await conn.execute(select(backups.c.version).where(backups.c.user_id == user_pk))
            ).scalar_one_or_none()
            version = max(now, int(old) + 1) if old is not None else now
            if old is None:
                await conn.execute(
                    insert(backups).values(
                        user_id=user_pk,
                        auth_key=auth_key,
                        version=version,
                        ciphertext=ciphertext,
                        updated_at=now,
                    )
                )
            else:
                await conn.execute(
                    update(backups)
                    .where(backups.c.user_id == user_pk)
                    .values(
                        auth_key=auth_key, version=version, ciphertext=ciphertext, updated_at=now
                    )
                )
            return version

    async def get(self, username: str) -> Backup | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(backups.c.auth_key, backups.c.version, backups.c.ciphertext)
                    .join_from(backups, users, backups.c.user_id == users.c.id)
                    .where(users.c.username == username)
                )
            ).first()
        return Backup(row[0], int(row[1]), row[2]) if row else None

    async def add_challenge(
        self, username: str, challenge: str, now: int, expires_at: int, keep: int
    ) -> bool:
        """Record one more outstanding challenge for the user's backup, keeping the
        user's ``keep`` newest (and dropping every expired one); ``False`` if the
        user has no backup."""
        async with self._engine.begin() as conn:
            user_pk = (
                await conn.execute(
                    select(backups.c.user_id)
                    .join_from(backups, users, backups.c.user_id == users.c.id)
                    .where(users.c.username == username)
                )
            ).scalar_one_or_none()
            if user_pk is None:
                return False
            await conn.execute(
                delete(backup_challenges).where(backup_challenges.c.expires_at < now)
            )
            await conn.execute(
                insert(backup_challenges).values(
                    user_id=user_pk, challenge=challenge, expires_at=expires_at
                )
            )
            evict_upto = (
                await conn.execute(
                    select(backup_challenges.c.id)
                    .where(backup_challenges.c.user_id == user_pk)
                    .order_by(backup_challenges.c.id.desc())
                    .offset(keep)
                    .limit(1)
                )
            ).scalar_one_or_none()
            if evict_upto is not None:
                await conn.execute(
                    delete(backup_challenges).where(
                        backup_challenges.c.user_id == user_pk,
                        backup_challenges.c.id <= evict_upto,
                    )
                )
            return True

    async def consume_challenge(self, username: str, challenge: str, now: int) -> bool:
        """True once for an outstanding, unexpired challenge of that user."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(backup_challenges).where(
                    backup_challenges.c.user_id == user_pk_of(username),
                    backup_challenges.c.challenge == challenge,
                    backup_challenges.c.expires_at >= now,
                )
            )
            return bool(result.rowcount)
