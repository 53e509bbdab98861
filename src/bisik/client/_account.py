"""The account side of a client: verification, this account's devices, linking
approval and the encrypted backup. Mixed into ``Client``."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from bisik.client._devices import DeviceDirectory
from bisik.client._errors import ClientError
from bisik.client._linking import Confirm, approve_link, exporter
from bisik.client._models import DeviceInfo
from bisik.client._recovery import build_backup
from bisik.client._store import LocalStore
from bisik.client._transport import Transport
from bisik.crypto import (
    CryptoError,
    IdentityKey,
    decrypt_device_name,
    encrypt_device_name,
    safety_number,
)
from bisik.proto import ProtocolError

# The backup follows changes at most this often (and on close); a larger one
# waits longer, so that uploading it again and again averages at most
# BACKUP_BYTES_PER_S (a full backup of 20,000 messages is ~11 MB: one every
# ~11 minutes instead of every minute).
BACKUP_INTERVAL_S = 60.0
BACKUP_BYTES_PER_S = 16 * 1024

log = logging.getLogger("bisik.client")


class AccountMixin:
    username: str
    device_id: str
    _transport: Transport
    _store: LocalStore
    _devices: DeviceDirectory
    _identity: IdentityKey
    _backup_dirty: bool
    _backup_at: float
    _backup_wait_s: float
    _answer_of: Callable[[Awaitable[bool]], Awaitable[bool]]
    _enqueue: Callable[[str, Any], None]

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
        self._backup_dirty = True
        self._enqueue("resync", None)

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
            export=exporter(self._store),
            code_text=code,
            confirm=confirm,
            history_days=history_days,
            timeout=timeout,
        )
        self._devices.forget(self.username)
        return new_id

    # -- backup -------------------------------------------------------------------

    async def backup_now(self) -> bool:
        """Upload the encrypted account backup; ``False`` if there is no recovery key."""
        body = build_backup(self._store, self.username)
        if body is None:
            return False
        await self._transport.request("PUT", "/v1/backup", body)
        self._backup_dirty = False
        self._backup_at = time.monotonic()
        self._backup_wait_s = max(BACKUP_INTERVAL_S, len(body["ciphertext"]) / BACKUP_BYTES_PER_S)
        return True

    async def _maybe_backup(self) -> None:
        if self._backup_dirty and time.monotonic() - self._backup_at > self._backup_wait_s:
            try:
                # Up to 12 MiB on its way: what is pushed meanwhile is opened.
                await self._answer_of(self.backup_now())
            except ProtocolError as exc:
                # Refused for now (server storage full, rate limit): the next
                # interval tries again; the backup stays marked dirty.
                log.info("backup refused for now (%s)", exc.code)
                self._backup_at = time.monotonic()
