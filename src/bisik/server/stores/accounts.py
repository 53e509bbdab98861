from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bisik.server.stores.schema import (
    access_tokens,
    auth_challenges,
    device_grants,
    devices,
    envelopes,
    fallback_keys,
    invites,
    one_time_keys,
    push_subscriptions,
    user_pk_of,
    users,
)


class UsernameTaken(Exception):
    pass


class InviteInvalid(Exception):
    pass


class DeviceKeyTaken(Exception):
    pass


class UnknownUser(Exception):
    pass


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    name: str | None
    created_at: int
    last_seen_at: int | None


@dataclass(frozen=True, slots=True)
class DeviceHandle:
    """Which device: all that most handlers read, and all an open socket keeps of it."""

    pk: int
    username: str
    device_id: str


@dataclass(frozen=True, slots=True)
class DeviceRow(DeviceHandle):
    """A device with its public keys and their signatures."""

    identity_key: str
    curve25519: str
    ed25519: str
    identity_signature: str
    device_signature: str


@dataclass(frozen=True)
class SignedKeyRow:
    key_id: str
    public_key: str
    signature: str


_DEVICE_COLUMNS = (
    devices.c.id,
    users.c.username,
    users.c.identity_key,
    devices.c.device_id,
    devices.c.curve25519,
    devices.c.ed25519,
    devices.c.identity_signature,
    devices.c.device_signature,
)


def _device(row: Sequence[Any]) -> DeviceRow:
    return DeviceRow(
        pk=int(row[0]),
        username=row[1],
        identity_key=row[2],
        device_id=row[3],
        curve25519=row[4],
        ed25519=row[5],
        identity_signature=row[6],
        device_signature=row[7],
    )


async def insert_one_time_keys(
    conn: AsyncConnection, device_pk: int, keys: Iterable[SignedKeyRow]
) -> None:
    rows = [
        {
            "device_pk": device_pk,
            "key_id": k.key_id,
            "public_key": k.public_key,
            "signature": k.signature,
        }
        for k in keys
    ]
    if rows:
        await conn.execute(insert(one_time_keys), rows)


async def _insert_device(
    conn: AsyncConnection,
    user_pk: int,
    device: DeviceRow,
    one_time: Sequence[SignedKeyRow],
    fallback: SignedKeyRow | None,
    now: int,
    name: str | None = None,
) -> int:
    """Insert a device and its published keys; ``IntegrityError`` on a clash."""
    device_pk = (
        await conn.execute(
            insert(devices)
            .values(
                user_id=user_pk,
                device_id=device.device_id,
                curve25519=device.curve25519,
                ed25519=device.ed25519,
                identity_signature=device.identity_signature,
                device_signature=device.device_signature,
                created_at=now,
                name=name,
            )
            .returning(devices.c.id)
        )
    ).scalar_one()
    # One key per key id, as KeyStore.upload keeps it (the id is unique per device).
    await insert_one_time_keys(conn, int(device_pk), {k.key_id: k for k in one_time}.values())
    if fallback is not None:
        await conn.execute(
            insert(fallback_keys).values(
                device_pk=device_pk,
                key_id=fallback.key_id,
                public_key=fallback.public_key,
                signature=fallback.signature,
                used=False,
            )
        )
    return int(device_pk)


class AccountStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create_account(
        self,
        *,
        username: str,
        identity_key: str,
        device: DeviceRow,
        one_time: Sequence[SignedKeyRow],
        fallback: SignedKeyRow | None,
        invite_hash: bytes | None,
        now: int,
    ) -> int:
        """Create the user, its first device and keys, and spend the invite, atomically.

        Returns the device's primary key.
        """
        async with self._engine.begin() as conn:
            if invite_hash is not None:
                spent = await conn.execute(
                    update(invites)
                    .where(invites.c.code_hash == invite_hash, invites.c.used_at.is_(None))
                    .values(used_at=now)
                )
                if spent.rowcount != 1:
                    raise InviteInvalid()
            try:
                user_pk = (
                    await conn.execute(
                        insert(users)
                        .values(username=username, identity_key=identity_key, created_at=now)
                        .returning(users.c.id)
                    )
                ).scalar_one()
            except IntegrityError:
                raise UsernameTaken() from None
            try:
                device_pk = await _insert_device(conn, user_pk, device, one_time, fallback, now)
            except IntegrityError:
                # The user is new, so only the unique curve25519 key can clash.
                raise DeviceKeyTaken() from None
            if invite_hash is not None:
                await conn.execute(
                    update(invites)
                    .where(invites.c.code_hash == invite_hash)
                    .values(used_by=user_pk)
                )
            return int(device_pk)

    async def get_device(self, username: str, device_id: str) -> DeviceRow | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(*_DEVICE_COLUMNS)
                    .join_from(devices, users, devices.c.user_id == users.c.id)
                    .where(
                        users.c.username == username,
                        devices.c.device_id == device_id,
                        devices.c.revoked_at.is_(None),
                    )
                )
            ).first()
        return _device(row) if row else None

    async def get_device_by_pk(self, device_pk: int) -> DeviceRow | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(*_DEVICE_COLUMNS)
                    .join_from(devices, users, devices.c.user_id == users.c.id)
                    .where(devices.c.id == device_pk, devices.c.revoked_at.is_(None))
                )
            ).first()
        return _device(row) if row else None

    async def user_devices(self, username: str) -> tuple[str, list[DeviceRow]] | None:
        """The user's identity key and devices, or ``None`` if there is no such user."""
        async with self._engine.connect() as conn:
            identity = (
                await conn.execute(select(users.c.identity_key).where(users.c.username == username))
            ).scalar_one_or_none()
            if identity is None:
                return None
            rows = (
                await conn.execute(
                    select(*_DEVICE_COLUMNS)
                    .join_from(devices, users, devices.c.user_id == users.c.id)
                    .where(users.c.username == username, devices.c.revoked_at.is_(None))
                    .order_by(devices.c.id)
                )
            ).all()
        return str(identity), [_device(r) for r in rows]

    async def resolve_devices(self, refs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Map each existing ``(username, device_id)`` to its device primary key."""
        wanted = set(refs)
        if not wanted:
            return {}
        async with self._engine.connect() as conn:
            return await conn.run_sync(resolve_devices, wanted)

    async def add_device(
        self,
        *,
        device: DeviceRow,
        one_time: Sequence[SignedKeyRow],
        fallback: SignedKeyRow | None,
        name: str | None,
        now: int,
    ) -> int:
        """Add a device to an existing user whose identity key is ``device.identity_key``.

        Raises:
            UnknownUser: no such user, or the identity key is not the user's.
            DeviceKeyTaken: the device id or key was ever used (revoked devices included).
        """
        async with self._engine.begin() as conn:
            user_pk = (
                await conn.execute(
                    select(users.c.id).where(
                        users.c.username == device.username,
                        users.c.identity_key == device.identity_key,
                    )
                )
            ).scalar_one_or_none()
            if user_pk is None:
                raise UnknownUser()
            try:
                return await _insert_device(
                    conn, int(user_pk), device, one_time, fallback, now, name
                )
            except IntegrityError:
                raise DeviceKeyTaken() from None

    async def own_devices(self, username: str) -> list[DeviceInfo]:
        """A user's devices with their (encrypted) names and times, for the user only."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        devices.c.device_id,
                        devices.c.name,
                        devices.c.created_at,
                        devices.c.last_seen_at,
                    )
                    .join_from(devices, users, devices.c.user_id == users.c.id)
                    .where(users.c.username == username, devices.c.revoked_at.is_(None))
                    .order_by(devices.c.id)
                )
            ).all()
        return [DeviceInfo(r[0], r[1], int(r[2]), r[3]) for r in rows]

    async def rename_device(self, username: str, device_id: str, name: str) -> bool:
        async with self._engine.begin() as conn:
            user_pk = user_pk_of(username)
            result = await conn.execute(
                update(devices)
                .where(
                    devices.c.user_id == user_pk,
                    devices.c.device_id == device_id,
                    devices.c.revoked_at.is_(None),
                )
                .values(name=name)
            )
            return bool(result.rowcount)

    async def revoke_device(self, username: str, device_id: str, now: int) -> int | None:
        """Revoke a device: it loses its tokens, keys and queue, and can never come back.

        Its row stays while the account exists (its id and keys stay taken: a
        replayed registration fails), without its name and last seen time.

        Returns its primary key, or ``None`` if the user has no such live device.
        """
        async with self._engine.begin() as conn:
            user_pk = user_pk_of(username)
            device_pk = (
                await conn.execute(
                    update(devices)
                    .where(
                        devices.c.user_id == user_pk,
                        devices.c.device_id == device_id,
                        devices.c.revoked_at.is_(None),
                    )
                    .values(revoked_at=now, name=None, last_seen_at=None)
                    .returning(devices.c.id)
                )
            ).scalar_one_or_none()
            if device_pk is None:
                return None
            for table, column in (
                (access_tokens, access_tokens.c.device_pk),
                (auth_challenges, auth_challenges.c.device_pk),
                (one_time_keys, one_time_keys.c.device_pk),
                (fallback_keys, fallback_keys.c.device_pk),
                (envelopes, envelopes.c.recipient_device_pk),
                (push_subscriptions, push_subscriptions.c.device_pk),
                (device_grants, device_grants.c.device_pk),
            ):
                await conn.execute(delete(table).where(column == device_pk))
            return int(device_pk)

    async def add_grant(
        self, issuer: DeviceRow, grant_hash: bytes, now: int, expires_at: int
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(device_grants).where(device_grants.c.expires_at < now))
            user_pk = user_pk_of(issuer.username)
            await conn.execute(
                insert(device_grants).values(
                    grant_hash=grant_hash,
                    user_id=user_pk,
                    device_pk=issuer.pk,
                    expires_at=expires_at,
                )
            )

    async def consume_grant(self, username: str, grant_hash: bytes, now: int) -> bool:
        """True once for an unexpired grant issued by a live device of ``username``."""
        async with self._engine.begin() as conn:
            user_pk = user_pk_of(username)
            live = select(devices.c.id).where(devices.c.revoked_at.is_(None))
            result = await conn.execute(
                delete(device_grants).where(
                    device_grants.c.grant_hash == grant_hash,
                    device_grants.c.user_id == user_pk,
                    device_grants.c.expires_at >= now,
                    device_grants.c.device_pk.in_(live),
                )
            )
            return bool(result.rowcount)

    async def add_invite(self, code_hash: bytes, now: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(invites).values(code_hash=code_hash, created_at=now))

    async def touch_device(self, device_pk: int, now: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(devices).where(devices.c.id == device_pk).values(last_seen_at=now)
            )


_RESOLVE = (
    select(users.c.username, devices.c.device_id, devices.c.id)
    .join_from(devices, users, devices.c.user_id == users.c.id)
    .where(
        devices.c.revoked_at.is_(None),
        tuple_(users.c.username, devices.c.device_id).in_(bindparam("refs", expanding=True)),
    )
)


def resolve_devices(conn: Connection, refs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Primary keys of the existing, unrevoked devices among ``(username, device_id)``."""
    found: dict[tuple[str, str], int] = {}
    wanted = sorted(refs)
    for start in range(0, len(wanted), 200):
        for username, device_id, pk in conn.execute(
            _RESOLVE, {"refs": wanted[start : start + 200]}
        ):
            found[(username, device_id)] = int(pk)
    return found
