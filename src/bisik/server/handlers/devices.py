from __future__ import annotations

from bisik.proto import (
    AddDeviceRequest,
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
from bisik.server.handlers.accounts import verify_device_keys, verify_signed_keys
from bisik.server.stores import AccountStore, DeviceRow
from bisik.server.stores.accounts import DeviceKeyTaken, UnknownUser


class DevicesHandler:
    """A user's further devices: added with the identity key's signature, renamed, revoked."""

    def __init__(self, accounts: AccountStore, notifier: Notifier) -> None:
        self._accounts = accounts
        self._notifier = notifier

    async def add(self, req: AddDeviceRequest) -> RegisterResponse:
        """Register a device that one of the user's devices signed with the identity key.

        The identity signature is the authorisation: only a holder of the user's
        identity key (an existing device, or the recovery backup) can make one.
        """
        verify_device_keys(req.device)
        one_time, fallback = verify_signed_keys(
            req.device.ed25519, req.one_time_keys, req.fallback_key
        )
        device = DeviceRow(
            0,
            req.device.username,
            req.device.identity_key,
            req.device.device_id,
            req.device.curve25519,
            req.device.ed25519,
            req.device.signatures.identity,
            req.device.signatures.device,
        )
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
