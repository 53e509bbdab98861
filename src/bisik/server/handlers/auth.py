from __future__ import annotations

import hashlib
import secrets

from bisik.crypto import SignatureError, auth_payload, verify_ed25519
from bisik.proto import (
    ChallengeRequest,
    ChallengeResponse,
    ErrorCode,
    ProtocolError,
    TokenRequest,
    TokenResponse,
)
from bisik.server._clock import now_ms
from bisik.server._config import ServerConfig
from bisik.server.stores import AccountStore, AuthStore, DeviceRow


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class AuthHandler:
    """Challenge-response with the device's Ed25519 key; the server never sees a password."""

    def __init__(self, config: ServerConfig, accounts: AccountStore, auth: AuthStore) -> None:
        self._config = config
        self._accounts = accounts
        self._auth = auth

    async def _device(self, username: str, device_id: str) -> DeviceRow:
        device = await self._accounts.get_device(username, device_id)
        if device is None:
            raise ProtocolError(ErrorCode.UNKNOWN_DEVICE, "no such user or device")
        return device

    async def challenge(self, req: ChallengeRequest) -> ChallengeResponse:
        device = await self._device(req.username, req.device_id)
        challenge = secrets.token_urlsafe(32)
        now = now_ms()
        expires = now + self._config.challenge_ttl_s * 1000
        await self._auth.add_challenge(challenge, device.pk, expires, now)
        return ChallengeResponse(challenge=challenge, expires_at=expires)

    async def token(self, req: TokenRequest) -> TokenResponse:
        device = await self._device(req.username, req.device_id)
        payload = auth_payload(
            challenge=req.challenge, username=req.username, device_id=req.device_id
        )
        try:
            verify_ed25519(device.ed25519, payload, req.signature)
        except SignatureError:
            raise ProtocolError(ErrorCode.BAD_SIGNATURE, "challenge signature is invalid") from None
        now = now_ms()
        if not await self._auth.consume_challenge(req.challenge, device.pk, now):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "challenge unknown, used or expired")
        token = secrets.token_urlsafe(32)
        expires = now + self._config.token_ttl_s * 1000
        await self._auth.add_token(_token_hash(token), device.pk, expires, now)
        return TokenResponse(token=token, expires_at=expires)

    async def authenticate(self, token: object) -> DeviceRow:
        """The device a bearer token belongs to.

        Raises:
            ProtocolError: ``unauthorized`` or ``token_expired``.
        """
        if not isinstance(token, str) or not 20 <= len(token) <= 128:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "missing or malformed access token")
        found = await self._auth.lookup_token(_token_hash(token))
        if found is None:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "unknown access token")
        device_pk, expires_at = found
        if expires_at < now_ms():
            raise ProtocolError(ErrorCode.TOKEN_EXPIRED, "access token expired; authenticate again")
        device = await self._accounts.get_device_by_pk(device_pk)
        if device is None:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "device no longer exists")
        return device
