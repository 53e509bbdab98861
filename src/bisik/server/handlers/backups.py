from __future__ import annotations

import secrets

from bisik.crypto import SignatureError, backup_auth_payload, verify_ed25519
from bisik.proto import (
    BackupBlob,
    BackupChallengeRequest,
    BackupFetchRequest,
    BackupPut,
    ChallengeResponse,
    Done,
    ErrorCode,
    ProtocolError,
)
from bisik.server._clock import now_ms
from bisik.server.stores import DeviceRow
from bisik.server.stores.backups import Backup, BackupStore

# A challenge per request, so that nobody's request spoils another's (anyone may
# ask for one, without an account); a user's newest few are kept, each usable
# once and briefly (the client signs it at once).
CHALLENGE_TTL_MS = 60 * 1000
MAX_CHALLENGES = 16


class BackupsHandler:
    """Encrypted account backups for recovery when every device is lost.

    Fetching needs a signature by a key derived from the recovery key (whose
    public half came with the backup), so the server hands the ciphertext only
    to someone who holds the recovery key, and never learns that key.
    """

    def __init__(self, store: BackupStore) -> None:
        self._store = store

    async def put(self, device: DeviceRow, req: BackupPut) -> Done:
        await self._store.put(device.username, req.auth_key, req.ciphertext, now_ms())
        return Done()

    async def challenge(self, req: BackupChallengeRequest) -> ChallengeResponse:
        challenge = secrets.token_urlsafe(32)
        now = now_ms()
        expires = now + CHALLENGE_TTL_MS
        if not await self._store.add_challenge(
            req.username, challenge, now, expires, MAX_CHALLENGES
        ):
            raise ProtocolError(ErrorCode.NOT_FOUND, "no backup for this user")
        return ChallengeResponse(challenge=challenge, expires_at=expires)

    async def prove(self, username: str, challenge: str, signature: str) -> Backup:
        """Check a signature by the recovery key's auth key over a fresh challenge."""
        backup = await self._store.get(username)
        if backup is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no backup for this user")
        payload = backup_auth_payload(username=username, challenge=challenge)
        try:
            verify_ed25519(backup.auth_key, payload, signature)
        except SignatureError:
            raise ProtocolError(
                ErrorCode.BAD_SIGNATURE, "not signed with this backup's recovery key"
            ) from None
        if not await self._store.consume_challenge(username, challenge, now_ms()):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "challenge unknown, used or expired")
        return backup

    async def fetch(self, req: BackupFetchRequest) -> BackupBlob:
        backup = await self.prove(req.username, req.challenge, req.signature)
        return BackupBlob(version=backup.version, ciphertext=backup.ciphertext)
