"""Making a new device: its profile and keys, and the signed body the server checks.

Shared by account creation, device linking and recovery, which differ only in
where the identity key comes from and which endpoint registers the device.
"""

from __future__ import annotations

import contextlib
import platform
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bisik.client import _profile
from bisik.client._errors import ProfileError
from bisik.client._profile import OpenProfile
from bisik.client._transport import Transport
from bisik.crypto import (
    IdentityKey,
    KdfParams,
    OlmMachine,
    RecoveryKey,
    b64decode,
    b64encode,
    device_payload,
    encrypt_device_name,
)
from bisik.proto import validate_username

ONE_TIME_KEY_TARGET = 50
_DEVICE_ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def new_device_id() -> str:
    return "".join(secrets.choice(_DEVICE_ID_ALPHABET) for _ in range(10))


def default_device_name() -> str:
    return (platform.node() or "bisik device")[:64]


@dataclass(frozen=True)
class ReadyDevice:
    """A registered device's unlocked profile, Olm account and identity key:
    what a ``Client`` is opened from."""

    profile: OpenProfile
    machine: OlmMachine
    identity: IdentityKey

    def __repr__(self) -> str:
        return f"ReadyDevice({self.profile!r})"


@dataclass
class NewDevice:
    """A device's fresh profile and keys, before the server knows it."""

    profile: OpenProfile
    machine: OlmMachine
    device_id: str
    one_time_keys: list[dict[str, str]]
    fallback_key: dict[str, str]

    def payload(self, username: str, identity_key: str) -> bytes:
        return device_payload(
            username=username,
            device_id=self.device_id,
            curve25519=self.machine.curve25519,
            ed25519=self.machine.ed25519,
            identity_key=identity_key,
        )

    def device_keys(
        self, username: str, identity_key: str, identity_signature: str
    ) -> dict[str, Any]:
        """The ``DeviceKeys`` body: signed by the identity key and by the device itself."""
        return {
            "username": username,
            "device_id": self.device_id,
            "curve25519": self.machine.curve25519,
            "ed25519": self.machine.ed25519,
            "identity_key": identity_key,
            "signatures": {
                "identity": identity_signature,
                "device": self.machine.sign(self.payload(username, identity_key)),
            },
        }

    def add_device_body(
        self,
        username: str,
        identity: IdentityKey,
        name: str | None,
        *,
        grant: str | None = None,
        recovery: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/devices``: this device, signed with the account's identity key,
        with the permission to join (a grant from a linked device, or a recovery proof)."""
        signature = identity.sign(self.payload(username, identity.public_key))
        return {
            "device": self.device_keys(username, identity.public_key, signature),
            "grant": grant,
            "recovery": recovery,
            "one_time_keys": self.one_time_keys,
            "fallback_key": self.fallback_key,
            "name": encrypt_device_name(identity, name or default_device_name()),
        }

    def finish(self, *, server_url: str, username: str, identity: IdentityKey) -> None:
        """Record the registered device in its profile (keys now published)."""
        store = self.profile.store
        with store.transaction():
            self.machine.mark_keys_as_published()
            store.set_meta("server_url", server_url.rstrip("/"))
            store.set_meta("username", username)
            store.set_meta("device_id", self.device_id)
            store.set_meta("identity_key", b64encode(identity.private_bytes()))
            store.pin_identity(username, identity.public_key, int(time.time() * 1000))


@contextlib.asynccontextmanager
async def new_device(home: Path, password: str, kdf: KdfParams | None) -> AsyncIterator[NewDevice]:
    """A new profile with fresh Olm keys; removed again if the block fails."""
    profile = _profile.create(home, password, kdf)
    try:
        with profile.store.transaction():
            machine = OlmMachine.create(profile.pickle_key, profile.store)
            one_time = machine.generate_one_time_keys(ONE_TIME_KEY_TARGET)
            fallback = machine.generate_fallback_key()
        yield NewDevice(profile, machine, new_device_id(), one_time, fallback)
    except BaseException:
        profile.close()
        _profile.destroy(home)
        raise


async def register_account(
    home: Path,
    *,
    server_url: str,
    username: str,
    password: str,
    invite: str | None,
    kdf: KdfParams | None,
) -> tuple[ReadyDevice, str]:
    """Create a profile in ``home`` and register a new account with its first
    device; returns the device and the account's recovery key (shown once).

    Raises:
        ProtocolError: the server refused (``username_taken``, ``invalid_invite``...);
            nothing is left behind in ``home``.
    """
    validate_username(username)
    async with new_device(home, password, kdf) as device:
        identity = IdentityKey.generate()
        recovery = RecoveryKey.generate()
        signature = identity.sign(device.payload(username, identity.public_key))
        body = {
            "username": username,
            "invite": invite,
            "device": device.device_keys(username, identity.public_key, signature),
            "one_time_keys": device.one_time_keys,
            "fallback_key": device.fallback_key,
        }
        transport = Transport(server_url)
        try:
            await transport.request("POST", "/v1/accounts", body, auth=False)
        finally:
            await transport.http.aclose()
        device.finish(server_url=server_url, username=username, identity=identity)
        with device.profile.store.transaction():
            device.profile.store.set_meta("recovery_key", recovery.to_text())
    return ReadyDevice(device.profile, device.machine, identity), recovery.to_text()


def unlock_device(home: Path, password: str) -> ReadyDevice:
    """Unlock an existing profile (``WrongPassword`` if the password is wrong)."""
    profile = _profile.unlock(home, password)
    try:
        if profile.store.get_meta("revoked"):
            raise ProfileError("this device was removed from its account; link it again or recover")
        pickle = profile.store.load_account()
        secret = profile.store.get_meta("identity_key")
        if pickle is None or secret is None:
            raise ProfileError("profile is incomplete (was account creation interrupted?)")
        machine = OlmMachine.from_pickle(pickle, profile.pickle_key, profile.store)
        return ReadyDevice(profile, machine, IdentityKey.from_private_bytes(b64decode(secret)))
    except BaseException:
        profile.close()
        raise
