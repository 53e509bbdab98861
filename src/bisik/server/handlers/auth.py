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
from bisik.server.stores import AuthStore, DeviceRow
from bisik.server.stores.auth import TokenOutcome


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


_REFUSALS = {
    TokenOutcome.UNKNOWN_DEVICE: (ErrorCode.UNKNOWN_DEVICE, "no such user or device"),
    TokenOutcome.BAD_SIGNATURE: (ErrorCode.BAD_SIGNATURE, "challenge signature is invalid"),
    TokenOutcome.BAD_CHALLENGE: (ErrorCode.UNAUTHORIZED, "challenge unknown, used or expired"),
}


class AuthHandler:
    """Challenge-response with the device's Ed25519 key; the server never sees a password.

    Each step is one store transaction: a challenge is issued to a live device;
    a token is issued when the device's signature checks out and its challenge
    is spent (single use, fresh); a token authenticates while it is fresh and
    its device is not revoked (revoking deletes the device's tokens too).
    """

    def __init__(self, config: ServerConfig, auth: AuthStore) -> None:
        self._config = config
        self._auth = auth

    async def challenge(self, req: ChallengeRequest) -> ChallengeResponse:
        challenge = secrets.token_urlsafe(32)
        now = now_ms()
        expires = now + self._config.challenge_ttl_s * 1000
        if not await self._auth.add_challenge(req.username, req.device_id, challenge, expires, now):
            raise ProtocolError(ErrorCode.UNKNOWN_DEVICE, "no such user or device")
        return ChallengeResponse(challenge=challenge, expires_at=expires)

    async def token(self, req: TokenRequest) -> TokenResponse:
        payload = auth_payload(
            challenge=req.challenge, username=req.username, device_id=req.device_id
        )

        def signed_by(ed25519: str) -> bool:
            try:
                verify_ed25519(ed25519, payload, req.signature)
            except SignatureError:
                return False
            return True

        token = secrets.token_urlsafe(32)
        now = now_ms()
        expires = now + self._config.token_ttl_s * 1000
        outcome = await self._auth.issue_token(
            req.username, req.device_id, req.challenge, signed_by, _token_hash(token), expires, now
        )
        if outcome is not TokenOutcome.ISSUED:
            raise ProtocolError(*_REFUSALS[outcome])
        return TokenResponse(token=token, expires_at=expires)

    async def device_live(self, device_pk: int) -> bool:
        """Whether an authenticated socket's device is still there (not revoked)."""
        return await self._auth.device_live(device_pk)

    async def authenticate(self, token: object) -> DeviceRow:
        """The device a bearer token belongs to.

        Raises:
            ProtocolError: ``unauthorized`` or ``token_expired``.
        """
        if not isinstance(token, str) or not 20 <= len(token) <= 128:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "missing or malformed access token")
        found = await self._auth.lookup_token(_token_hash(token))
        if found is None:
            # Never issued, purged, or its device was removed (which deletes its tokens).
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "unknown access token")
        device, expires_at = found
        if expires_at < now_ms():
            raise ProtocolError(ErrorCode.TOKEN_EXPIRED, "access token expired; authenticate again")
        return device
