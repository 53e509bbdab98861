"""Contacts' device lists: fetched from the server, trusted only when signed.

A device counts only if its owner's identity key signed it (and it signed
itself). The first identity key seen for a user is pinned (trust on first
use); a different one later blocks sending until the user acknowledges it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any
from urllib.parse import quote

from bisik.client._clock import Clock
from bisik.client._errors import ClientError, IdentityKeyChanged
from bisik.client._store import LocalStore, StoredDevice
from bisik.client._transport import Transport
from bisik.crypto import (
    CryptoError,
    OlmMachine,
    SignatureError,
    device_payload,
    one_time_key_payload,
    verify_ed25519,
)
from bisik.proto import ProtocolError

log = logging.getLogger("bisik.client.devices")

# How long a fetched device list is used before asking the server again.
DEVICE_LIST_TTL_S = 300.0


def _verified(username: str, identity_key: str, raw: dict[str, Any]) -> StoredDevice | None:
    try:
        payload = device_payload(
            username=raw["username"],
            device_id=raw["device_id"],
            curve25519=raw["curve25519"],
            ed25519=raw["ed25519"],
            identity_key=raw["identity_key"],
        )
        if raw["username"] != username or raw["identity_key"] != identity_key:
            return None
        verify_ed25519(identity_key, payload, raw["signatures"]["identity"])
        verify_ed25519(raw["ed25519"], payload, raw["signatures"]["device"])
    except (KeyError, TypeError, SignatureError):
        return None
    return StoredDevice(username, raw["device_id"], raw["curve25519"], raw["ed25519"], identity_key)


class DeviceDirectory:
    def __init__(self, store: LocalStore, transport: Transport, clock: Clock) -> None:
        self._clock = clock
        self._store = store
        self._transport = transport
        self._fetched: dict[str, float] = {}
        # Counts forgets: a fetch that was under way when a list was forgotten
        # may have read it before the change, so it does not count as fresh.
        self._forgets = 0
        # Users whose device-list changes this connection is told about.
        self._watched: set[str] = set()

    def forget(self, username: str) -> None:
        self._fetched.pop(username, None)
        self._forgets += 1

    def forget_all(self) -> None:
        """After a reconnect: lists may have changed while we were away."""
        self._fetched.clear()
        self._watched.clear()
        self._forgets += 1

    async def watch(self, usernames: list[str]) -> None:
        """Ask to be told (``devices_changed``) when these users' devices change."""
        fresh = [u for u in dict.fromkeys(usernames) if u not in self._watched]
        if not fresh or not self._transport.connected:
            return
        for start in range(0, len(fresh), 5000):
            chunk = fresh[start : start + 5000]
            try:
                await self._transport.call("devices_watch", {"usernames": chunk})
            except ProtocolError as exc:
                # Over the server's cap or rate: those users go unwatched, and
                # their lists are fetched again when older than DEVICE_LIST_TTL_S.
                log.info("devices_watch refused (%s); lists will be fetched again", exc.code)
                return
            self._watched.update(chunk)

    async def _fetch(self, username: str) -> list[StoredDevice]:
        forgets = self._forgets
        data = await self._transport.request("GET", f"/v1/users/{quote(username, safe='')}/devices")
        identity_key = str(data["identity_key"])
        devices = []
        for raw in data["devices"]:
            device = _verified(username, identity_key, raw)
            if device is None:
                log.warning("ignoring a device of %s not signed by their identity key", username)
                continue
            devices.append(device)
        now = self._clock()
        with self._store.transaction():
            pinned = self._store.pinned_identity(username)
            if pinned is None:
                self._store.pin_identity(username, identity_key, now)
            elif pinned[0] != identity_key:
                # Keep the devices signed by the pinned key: until the user accepts
                # the new key, nothing is sent to or accepted from the new devices.
                self._store.mark_identity_changed(username, identity_key)
                self._mark_fetched(username, forgets)
                return self._store.devices_of(username)
            self._store.replace_devices(username, devices, now)
        self._mark_fetched(username, forgets)
        if username not in self._watched:
            with contextlib.suppress(ClientError, ProtocolError):
                await self.watch([username])
        return devices

    def _mark_fetched(self, username: str, forgets: int) -> None:
        if forgets == self._forgets:  # nothing was forgotten while it was read
            self._fetched[username] = time.monotonic()

    def _check_identity(self, username: str) -> None:
        pinned = self._store.pinned_identity(username)
        if pinned is not None and pinned[1] is not None:
            raise IdentityKeyChanged(username, pinned[0], pinned[1])

    def _fresh(self, username: str, now: float) -> bool:
        """The user's device list was fetched within ``DEVICE_LIST_TTL_S``."""
        fetched = self._fetched.get(username)
        return fetched is not None and now - fetched <= DEVICE_LIST_TTL_S

    async def recipient_devices(self, username: str, *, refresh: bool) -> list[StoredDevice]:
        """The verified devices to encrypt to (fetching if unknown or stale).

        Raises:
            IdentityKeyChanged: the user's identity key changed and was not acknowledged.
            ProtocolError: ``unknown_user``.
        """
        devices = self._store.devices_of(username)
        if not devices or (refresh and not self._fresh(username, time.monotonic())):
            devices = await self._fetch(username)
        self._check_identity(username)
        return devices

    def fresh_devices(self, usernames: list[str]) -> dict[str, list[StoredDevice]]:
        """What ``recipient_devices(u, refresh=True)`` would return without
        fetching or raising, for many users in a few statements (a group's
        members): users whose stored list is fresh and whose identity key has
        not changed. The others are left out; ask ``recipient_devices``."""
        now = time.monotonic()
        fresh = [u for u in usernames if self._fresh(u, now)]
        if not fresh:
            return {}
        changed = self._store.identity_changes(fresh)
        return {
            u: devices
            for u, devices in self._store.devices_of_many(fresh).items()
            if devices and u not in changed
        }

    async def verified_device(self, username: str, device_id: str) -> StoredDevice | None:
        """A sender's device, refreshing the list once if it is not known yet.

        Raises:
            IdentityKeyChanged: the device is unknown and the sender's identity key
                changed without the user accepting it; the message must wait.
        """
        device = self._store.device(username, device_id)
        if device is None:
            await self._fetch(username)
            device = self._store.device(username, device_id)
            if device is None:
                self._check_identity(username)
        return device

    async def trust(self, username: str, *, verified: bool = False) -> None:
        """Accept a changed identity key (``verified`` after comparing safety numbers).

        Raises:
            ClientError: the contact was verified; only a new verification
                (``verified=True``) may accept a new key for them.
        """
        pinned = self._store.pinned_identity(username)
        if pinned is None:
            return
        if pinned[1] is None:
            if verified:
                with self._store.transaction():
                    self._store.pin_identity(username, pinned[0], self._clock(), verified=True)
            return
        if self._store.is_verified(username) and not verified:
            raise ClientError(
                f"{username} was verified and their identity key changed: compare the new "
                f"safety number (`bisik verify {username}`) before accepting it"
            )
        with self._store.transaction():
            self._store.pin_identity(username, pinned[1], self._clock(), verified=verified)
        await self._fetch(username)

    def pending_identity(self, username: str) -> str | None:
        """The identity key to verify for a contact: a changed one if any, else the pinned."""
        pinned = self._store.pinned_identity(username)
        if pinned is None:
            return None
        return pinned[1] or pinned[0]

    async def ensure_sessions(self, machine: OlmMachine, devices: list[StoredDevice]) -> None:
        """Start an Olm session with every device that has none, from claimed keys.

        Raises:
            ClientError: no key could be claimed for any device of someone.
        """
        needed = [d for d in devices if not machine.has_session(d.curve25519)]
        if not needed:
            return
        claimed = await self._transport.request(
            "POST",
            "/v1/keys/claim",
            {"devices": [{"username": d.username, "device_id": d.device_id} for d in needed]},
        )
        by_ref = {(d.username, d.device_id): d for d in needed}
        with self._store.transaction():
            try:
                for item in claimed["keys"]:
                    device = by_ref.get((item["username"], item["device_id"]))
                    if device is None:
                        continue
                    key = item["key"]
                    payload = one_time_key_payload(
                        key_id=key["key_id"], key=key["key"], fallback=bool(item["fallback"])
                    )
                    try:
                        verify_ed25519(device.ed25519, payload, key["signature"])
                    except SignatureError:
                        log.warning(
                            "claimed key of %s is not signed by the device", device.username
                        )
                        continue
                    machine.create_outbound_session(device.curve25519, key["key"])
            except (CryptoError, KeyError, TypeError):
                machine.forget_cached_sessions()
                raise
        lacking = [d for d in needed if not machine.has_session(d.curve25519)]
        if lacking:
            names = ", ".join(f"{d.username}/{d.device_id}" for d in lacking)
            raise ClientError(f"no one-time key could be claimed for {names}")
