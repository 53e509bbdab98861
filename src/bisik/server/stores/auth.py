from __future__ import annotations

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bisik.server.stores.schema import access_tokens, auth_challenges


class AuthStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add_challenge(
        self, challenge: str, device_pk: int, expires_at: int, now: int
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(auth_challenges).where(auth_challenges.c.expires_at < now))
            await conn.execute(
                insert(auth_challenges).values(
                    challenge=challenge, device_pk=device_pk, expires_at=expires_at
                )
            )

    async def consume_challenge(self, challenge: str, device_pk: int, now: int) -> bool:
        """Spend a challenge: true once, if it was issued to that device and is fresh."""
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    delete(auth_challenges)
                    .where(
                        auth_challenges.c.challenge == challenge,
                        auth_challenges.c.device_pk == device_pk,
                    )
                    .returning(auth_challenges.c.expires_at)
                )
            ).first()
        return row is not None and int(row[0]) >= now

    async def add_token(self, token_hash: bytes, device_pk: int, expires_at: int, now: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(access_tokens).where(access_tokens.c.expires_at < now))
            await conn.execute(
                insert(access_tokens).values(
                    token_hash=token_hash, device_pk=device_pk, expires_at=expires_at
                )
            )

    async def lookup_token(self, token_hash: bytes) -> tuple[int, int] | None:
        """``(device_pk, expires_at)`` for a token, or ``None``."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(access_tokens.c.device_pk, access_tokens.c.expires_at).where(
                        access_tokens.c.token_hash == token_hash
                    )
                )
            ).first()
        return (int(row[0]), int(row[1])) if row else None
