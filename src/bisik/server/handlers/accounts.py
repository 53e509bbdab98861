from __future__ import annotations

import hashlib
import secrets

from bisik.crypto import SignatureError, device_payload, one_time_key_payload, verify_ed25519
from bisik.proto import (
    DeviceKeys,
    DeviceList,
    ErrorCode,
    ProtocolError,
    RegisterRequest,
    RegisterResponse,
    SignedKey,
    validate_username,
)
from bisik.server._clock import now_ms
from bisik.server._config import ServerConfig
from bisik.server.stores import AccountStore, DeviceRow
from bisik.server.stores.accounts import (
    DeviceKeyTaken,
    InviteInvalid,
    SignedKeyRow,
    UsernameTaken,
)


def verify_device_keys(device: DeviceKeys) -> None:
    """Both signatures on a device: its owner's identity key and its own key."""
    payload = device_payload(
        username=device.username,
        device_id=device.device_id,
        curve25519=device.curve25519,
        ed25519=device.ed25519,
        identity_key=device.identity_key,
    )
    try:
        verify_ed25519(device.identity_key, payload, device.signatures.identity)
    except SignatureError:
        raise ProtocolError(
            ErrorCode.BAD_SIGNATURE, "device keys are not signed by the identity key"
        ) from None
    try:
        verify_ed25519(device.ed25519, payload, device.signatures.device)
    except SignatureError:
        raise ProtocolError(
            ErrorCode.BAD_SIGNATURE, "device keys are not signed by the device's own key"
        ) from None


def verify_signed_keys(
    ed25519: str, one_time: list[SignedKey], fallback: SignedKey | None
) -> tuple[list[SignedKeyRow], SignedKeyRow | None]:
    """Check each uploaded key's signature by the device; return store rows."""
    for key, is_fallback in [
        *((k, False) for k in one_time),
        *([(fallback, True)] if fallback else []),
    ]:
        payload = one_time_key_payload(key_id=key.key_id, key=key.key, fallback=is_fallback)
        try:
            verify_ed25519(ed25519, payload, key.signature)
        except SignatureError:
            raise ProtocolError(
                ErrorCode.BAD_SIGNATURE, f"key {key.key_id} is not signed by the device"
            ) from None
    rows = [SignedKeyRow(k.key_id, k.key, k.signature) for k in one_time]
    fb = SignedKeyRow(fallback.key_id, fallback.key, fallback.signature) if fallback else None
    return rows, fb


def device_row(keys: DeviceKeys) -> DeviceRow:
    """A device to store, from its (already verified) signed keys."""
    return DeviceRow(
        pk=0,
        username=keys.username,
        identity_key=keys.identity_key,
        device_id=keys.device_id,
        curve25519=keys.curve25519,
        ed25519=keys.ed25519,
        identity_signature=keys.signatures.identity,
        device_signature=keys.signatures.device,
    )


def device_keys(row: DeviceRow) -> DeviceKeys:
    return DeviceKeys.model_validate(
        {
            "username": row.username,
            "device_id": row.device_id,
            "curve25519": row.curve25519,
            "ed25519": row.ed25519,
            "identity_key": row.identity_key,
            "signatures": {"identity": row.identity_signature, "device": row.device_signature},
        }
    )


def _invite_hash(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


class AccountsHandler:
    def __init__(self, config: ServerConfig, accounts: AccountStore) -> None:
        self._config = config
        self._accounts = accounts

    async def register(self, req: RegisterRequest) -> RegisterResponse:
        username = validate_username(req.username)
        if req.device.username != username:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "device.username must match username")
        verify_device_keys(req.device)
        one_time, fallback = verify_signed_keys(
            req.device.ed25519, req.one_time_keys, req.fallback_key
        )
        invite_hash = None
        if self._config.invite_only:
            if not req.invite:
                raise ProtocolError(ErrorCode.INVITE_REQUIRED, "this server needs an invite code")
            invite_hash = _invite_hash(req.invite)
        device = device_row(req.device)
        try:
            await self._accounts.create_account(
                username=username,
                identity_key=req.device.identity_key,
                device=device,
                one_time=one_time,
                fallback=fallback,
                invite_hash=invite_hash,
                now=now_ms(),
            )
        except UsernameTaken:
            raise ProtocolError(ErrorCode.USERNAME_TAKEN, f"{username} is taken") from None
        except DeviceKeyTaken:
            raise ProtocolError(
                ErrorCode.DEVICE_EXISTS, "another device already uses this curve25519 key"
            ) from None
        except InviteInvalid:
            raise ProtocolError(
                ErrorCode.INVALID_INVITE, "the invite code is unknown or already used"
            ) from None
        return RegisterResponse(username=username, device_id=req.device.device_id)

    async def create_invite(self) -> str:
        code = secrets.token_urlsafe(18)
        await self._accounts.add_invite(_invite_hash(code), now_ms())
        return code

    async def device_list(self, username: str) -> DeviceList:
        try:
            validate_username(username)
        except ProtocolError:
            # No such user can exist; and a NUL or lone surrogate must not reach the database.
            raise ProtocolError(ErrorCode.UNKNOWN_USER, f"no user {username[:64]!r}") from None
        found = await self._accounts.user_devices(username)
        if found is None:
            raise ProtocolError(ErrorCode.UNKNOWN_USER, f"no user {username[:64]!r}")
        identity_key, rows = found
        return DeviceList(
            username=username, identity_key=identity_key, devices=[device_keys(r) for r in rows]
        )
