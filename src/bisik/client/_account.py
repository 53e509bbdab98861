"""The account side of a client: verifying contacts, this account's devices,
and approving a new device's link."""

from __future__ import annotations

from urllib.parse import quote

from bisik.client._backup import Backup
from bisik.client._devices import DeviceDirectory
from bisik.client._errors import ClientError
from bisik.client._linking import Confirm, approve_link
from bisik.client._models import DeviceInfo, DeviceStamp
from bisik.client._store import LocalStore
from bisik.client._transfer import export_account
from bisik.client._transport import Transport
from bisik.client._worker import Step, Worker
from bisik.crypto import (
    CryptoError,
    IdentityKey,
    decrypt_device_name,
    encrypt_device_name,
    safety_number,
)


class Account:
    """Verification of contacts, this account's devices, approving a link."""

    def __init__(
        self,
        *,
        db: LocalStore,
        me: DeviceStamp,
        identity: IdentityKey,
        transport: Transport,
        devices: DeviceDirectory,
        worker: Worker,
        backup: Backup,
    ) -> None:
        self._store = db
        self.username = me.username
        self.device_id = me.device_id
        self._identity = identity
        self._transport = transport
        self._devices = devices
        self._worker = worker
        self._backup = backup

    @property
    def identity_key(self) -> str:
        return self._identity.public_key

    # -- verification -----------------------------------------------------------

    def safety_number(self, username: str) -> str:
        """The number to compare with ``username`` (in person or on a call).

        If their identity key changed, it is the number for the *new* key.
        """
        their_key = self._devices.pending_identity(username)
        if their_key is None:
            raise ClientError(f"no identity key known for {username}; message them first")
        return safety_number(self.username, self.identity_key, username, their_key)

    def is_verified(self, username: str) -> bool:
        return self._store.is_verified(username)

    async def mark_verified(self, username: str) -> None:
        """Mark ``username`` verified (accepting their current or changed key)."""
        if self._devices.pending_identity(username) is None:
            raise ClientError(f"no identity key known for {username}; message them first")
        await self._devices.trust(username, verified=True)
        self._backup.changed()
        self._worker.submit(Step.RESYNC)

    # -- this account's devices -----------------------------------------------------

    async def list_devices(self) -> list[DeviceInfo]:
        """Every device of this account, with its (decrypted) name."""
        data = await self._transport.request("GET", "/v1/devices")
        devices = []
        for raw in data["devices"]:
            try:
                name = decrypt_device_name(self._identity, raw["name"]) if raw["name"] else ""
            except CryptoError:
                name = "(unreadable name)"
            devices.append(
                DeviceInfo(
                    device_id=raw["device_id"],
                    name=name,
                    created_at=int(raw["created_at"]),
                    last_seen_at=raw["last_seen_at"],
                    current=raw["device_id"] == self.device_id,
                )
            )
        return devices

    async def rename_device(self, device_id: str, name: str) -> None:
        blob = encrypt_device_name(self._identity, name)
        await self._transport.request(
            "PUT", f"/v1/devices/{quote(device_id, safe='')}/name", {"name": blob}
        )

    async def remove_device(self, device_id: str) -> None:
        """Revoke a device of this account: it is signed out and gets nothing more."""
        await self._transport.request("DELETE", f"/v1/devices/{quote(device_id, safe='')}")
        self._devices.forget(self.username)

    async def approve_link(
        self,
        code: str,
        *,
        confirm: Confirm,
        history_days: int = 30,
        timeout: float = 300.0,
    ) -> str:
        """Link a new device that shows ``code`` to this account.

        Args:
            confirm: shown the verification code; return ``True`` if the new
                device shows the same one.
            history_days: days of history to hand over (0 for none).

        Returns:
            The new device's id.
        """
        new_id = await approve_link(
            transport=self._transport,
            username=self.username,
            identity=self._identity,
            export=lambda days: export_account(self._store, history_days=days),
            code_text=code,
            confirm=confirm,
            history_days=history_days,
            timeout=timeout,
        )
        self._devices.forget(self.username)
        return new_id
