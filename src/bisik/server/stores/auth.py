"""Challenges and access tokens.

Sign-ins and socket connects come in bursts (every client of a restarted
server reconnects at once), so each operation is one ``OneHop`` step and
concurrent ones are group-committed (``Batcher``): a burst of sign-ins costs
one transaction, one thread hop and one fsync instead of several each.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, delete, insert, select

from bisik.server._db import OneHop
from bisik.server.stores._batch import Batcher
from bisik.server.stores.accounts import _DEVICE_COLUMNS, DeviceRow, _device
from bisik.server.stores.schema import access_tokens, auth_challenges, devices, users

# Expired challenges and tokens are swept at most this often (a scan of the table).
PURGE_EVERY_S = 60.0

_live_device = (
    select(devices.c.id, devices.c.ed25519)
    .join_from(devices, users, devices.c.user_id == users.c.id)
    .where(
        users.c.username == bindparam("username"),
        devices.c.device_id == bindparam("device_id"),
        devices.c.revoked_at.is_(None),
    )
)
_spend_challenge = (
    delete(auth_challenges)
    .where(
        auth_challenges.c.challenge == bindparam("challenge"),
        auth_challenges.c.device_pk == bindparam("device_pk"),
    )
    .returning(auth_challenges.c.expires_at)
)
_token_devices = (
    select(access_tokens.c.token_hash, access_tokens.c.expires_at, *_DEVICE_COLUMNS)
    .join_from(access_tokens, devices, access_tokens.c.device_pk == devices.c.id)
    .join(users, devices.c.user_id == users.c.id)
    .where(
        access_tokens.c.token_hash.in_(bindparam("hashes", expanding=True)),
        devices.c.revoked_at.is_(None),
    )
)

_unrevoked = select(devices.c.id).where(
    devices.c.id.in_(bindparam("pks", expanding=True)), devices.c.revoked_at.is_(None)
)


class TokenOutcome(enum.Enum):
    ISSUED = "issued"
    UNKNOWN_DEVICE = "unknown_device"
    BAD_SIGNATURE = "bad_signature"
    BAD_CHALLENGE = "bad_challenge"  # unknown, spent, another device's, or expired


@dataclass(frozen=True)
class _NewChallenge:
    username: str
    device_id: str
    challenge: str
    expires_at: int
    now: int


@dataclass(frozen=True)
class _NewToken:
    username: str
    device_id: str
    challenge: str
    signed_by: Callable[[str], bool]
    token_hash: bytes
    expires_at: int
    now: int


class AuthStore:
    def __init__(self, db: OneHop) -> None:
        self._db = db
        self._challenges: Batcher[_NewChallenge, bool] = Batcher(self._challenge_batch)
        self._tokens: Batcher[_NewToken, TokenOutcome] = Batcher(self._token_batch)
        self._lookups: Batcher[bytes, tuple[DeviceRow, int] | None] = Batcher(self._lookup_batch)
        self._live: Batcher[int, bool] = Batcher(self._live_batch)
        self._purged_at = -PURGE_EVERY_S

    async def close(self) -> None:
        """Wait for the writes already submitted (the server stops)."""
        await self._challenges.close()
        await self._tokens.close()
        await self._lookups.close()
        await self._live.close()

    async def add_challenge(
        self, username: str, device_id: str, challenge: str, expires_at: int, now: int
    ) -> bool:
        """Issue a challenge to a live device; false (nothing stored) if there is none."""
        return await self._challenges.submit(
            _NewChallenge(username, device_id, challenge, expires_at, now)
        )

    async def issue_token(
        self,
        username: str,
        device_id: str,
        challenge: str,
        signed_by: Callable[[str], bool],
        token_hash: bytes,
        expires_at: int,
        now: int,
    ) -> TokenOutcome:
        """Spend a challenge for a token, in one transaction.

        ``signed_by(ed25519)`` says whether the device with that public key signed
        the challenge. Only then is the challenge spent (once: if it was issued
        to that device and is fresh) and the token stored.
        """
        return await self._tokens.submit(
            _NewToken(username, device_id, challenge, signed_by, token_hash, expires_at, now)
        )

    async def lookup_token(self, token_hash: bytes) -> tuple[DeviceRow, int] | None:
        """``(device, expires_at)`` for a token of a live device, or ``None``."""
        return await self._lookups.submit(token_hash)

    async def device_live(self, device_pk: int) -> bool:
        """Whether the device exists and is not revoked. Sockets ask this now
        and then; a burst of them (a group's acks) shares one query."""
        return await self._live.submit(device_pk)

    def _purge(self, conn: Connection, now: int) -> None:
        if time.monotonic() - self._purged_at < PURGE_EVERY_S:
            return
        self._purged_at = time.monotonic()
        conn.execute(delete(auth_challenges).where(auth_challenges.c.expires_at < now))
        conn.execute(delete(access_tokens).where(access_tokens.c.expires_at < now))

    async def _challenge_batch(self, batch: list[_NewChallenge]) -> list[bool]:
        def work(conn: Connection) -> list[bool]:
            self._purge(conn, batch[0].now)
            found: list[bool] = []
            rows = []
            for req in batch:
                device = conn.execute(
                    _live_device, {"username": req.username, "device_id": req.device_id}
                ).first()
                found.append(device is not None)
                if device is not None:
                    rows.append(
                        {
                            "challenge": req.challenge,
                            "device_pk": device[0],
                            "expires_at": req.expires_at,
                        }
                    )
            if rows:
                conn.execute(insert(auth_challenges), rows)
            return found

        return await self._db.write(work)

    async def _token_batch(self, batch: list[_NewToken]) -> list[TokenOutcome]:
        def work(conn: Connection) -> list[TokenOutcome]:
            self._purge(conn, batch[0].now)
            outcomes: list[TokenOutcome] = []
            rows = []
            for req in batch:
                device = conn.execute(
                    _live_device, {"username": req.username, "device_id": req.device_id}
                ).first()
                if device is None:
                    outcomes.append(TokenOutcome.UNKNOWN_DEVICE)
                    continue
                # A refused signature leaves the challenge for the real device.
                if not req.signed_by(str(device[1])):
                    outcomes.append(TokenOutcome.BAD_SIGNATURE)
                    continue
                spent = conn.execute(
                    _spend_challenge, {"challenge": req.challenge, "device_pk": device[0]}
                ).first()
                if spent is None or int(spent[0]) < req.now:
                    outcomes.append(TokenOutcome.BAD_CHALLENGE)
                    continue
                rows.append(
                    {
                        "token_hash": req.token_hash,
                        "device_pk": device[0],
                        "expires_at": req.expires_at,
                    }
                )
                outcomes.append(TokenOutcome.ISSUED)
            if rows:
                conn.execute(insert(access_tokens), rows)
            return outcomes

        return await self._db.write(work)

    async def _live_batch(self, batch: list[int]) -> list[bool]:
        def work(conn: Connection) -> set[int]:
            return {int(pk) for (pk,) in conn.execute(_unrevoked, {"pks": list(set(batch))})}

        live = await self._db.read(work)
        return [pk in live for pk in batch]

    async def _lookup_batch(self, batch: list[bytes]) -> list[tuple[DeviceRow, int] | None]:
        def work(conn: Connection) -> dict[bytes, tuple[DeviceRow, int]]:
            rows = conn.execute(_token_devices, {"hashes": list(set(batch))}).all()
            return {bytes(row[0]): (_device(row[2:]), int(row[1])) for row in rows}

        found = await self._db.read(work)
        return [found.get(token_hash) for token_hash in batch]
