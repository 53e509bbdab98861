from __future__ import annotations

import hashlib
import secrets

from bisik.proto import (
    AddDeviceRequest,
    DeviceGrant,
    Done,
    ErrorCode,
    OwnDevice,
    OwnDevices,
    ProtocolError,
    RegisterResponse,
    RenameDeviceRequest,
)
from bisik.server._clock import now_ms
from bisik.server.handlers._notifier import Notifier
from bisik.server.handlers.accounts import device_row, verify_device_keys, verify_signed_keys
from bisik.server.handlers.backups import BackupsHandler
from bisik.server.stores import AccountStore, DeviceRow
from bisik.server.stores.accounts import DeviceKeyTaken, UnknownUser

GRANT_TTL_MS = 30 * 60 * 1000


def _hash(grant: str) -> bytes:
    return hashlib.sha256(grant.encode()).digest()


class DevicesHandler:
    """A user's further devices: added with the identity key's signature, renamed, revoked."""

    def __init__(self, accounts: AccountStore, notifier: Notifier, backups: BackupsHandler) -> None:
        self._accounts = accounts
        self._notifier = notifier
        self._backups = backups

    async def grant(self, device: DeviceRow) -> DeviceGrant:
        """A one-time permission (10 minutes) for a new device to join this account."""
        grant = secrets.token_urlsafe(32)
        now = now_ms()
        expires = now + GRANT_TTL_MS
        await self._accounts.add_grant(device, _hash(grant), now, expires)
        return DeviceGrant(grant=grant, expires_at=expires)

    async def _authorise(self, req: AddDeviceRequest) -> None:
        # The identity signature proves the key; the permission proves a live
        # device (or the recovery key) wants it: a revoked device holding an old
        # copy of the identity key cannot add devices with a grant (the recovery
        # key, which every device of the account also holds, is the owner's
        # last resort and stays valid until it is rotated).
        username = req.device.username
        if req.grant is not None:
            if await self._accounts.consume_grant(username, _hash(req.grant), now_ms()):
                return
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "the device grant is unknown or used")
        if req.recovery is not None:
            await self._backups.prove(username, req.recovery.challenge, req.recovery.signature)
            return
        raise ProtocolError(
            ErrorCode.UNAUTHORIZED, "adding a device needs a grant or a recovery proof"
        )

    async def add(self, req: AddDeviceRequest) -> RegisterResponse:
        """Register a device that one of the user's devices signed with the identity key.

        The identity signature is the authorisation: only a holder of the user's
        identity key (an existing device, or the recovery backup) can make one.
        """
        verify_device_keys(req.device)
        one_time, fallback = verify_signed_keys(
            req.device.ed25519, req.one_time_keys, req.fallback_key
        )
        # Spent last, once everything else checks out.
        await self._authorise(req)
        device = device_row(req.device)
        try:
            await self._accounts.add_device(
                device=device, one_time=one_time, fallback=fallback, name=req.name, now=now_ms()
            )
        except UnknownUser:
            raise ProtocolError(
                ErrorCode.BAD_SIGNATURE,
                "no user with that name and identity key",
            ) from None
        except DeviceKeyTaken:
            raise ProtocolError(
                ErrorCode.DEVICE_EXISTS, "this device id or key is (or was) already registered"
            ) from None
        await self._notifier.devices_changed(device.username)
        return RegisterResponse(username=device.username, device_id=device.device_id)

    async def list_own(self, device: DeviceRow) -> OwnDevices:
        rows = await self._accounts.own_devices(device.username)
        return OwnDevices(
            devices=[
                OwnDevice(
                    device_id=r.device_id,
                    name=r.name,
                    created_at=r.created_at,
                    last_seen_at=r.last_seen_at,
                )
                for r in rows
            ]
        )

    async def rename(self, device: DeviceRow, device_id: str, req: RenameDeviceRequest) -> Done:
        if not await self._accounts.rename_device(device.username, device_id, req.name):
            raise ProtocolError(ErrorCode.UNKNOWN_DEVICE, "you have no such device")
        await self._notifier.devices_changed(device.username)
        return Done()

    async def revoke(self, device: DeviceRow, device_id: str) -> Done:
        """Revoke one of the caller's own devices (itself included: a logout)."""
        device_pk = await self._accounts.revoke_device(device.username, device_id, now_ms())
        if device_pk is None:
            raise ProtocolError(ErrorCode.UNKNOWN_DEVICE, "you have no such device")
        await self._notifier.device_removed(device_pk)
        await self._notifier.devices_changed(device.username)
        return Done()
