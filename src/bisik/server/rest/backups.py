"""The encrypted account backup, for recovery with the recovery key."""

from __future__ import annotations

from starlette.requests import Request

from bisik.proto import (
    MAX_BACKUP_BYTES,
    BackupBlob,
    BackupChallengeRequest,
    BackupFetchRequest,
    BackupPut,
    ChallengeResponse,
    Done,
)
from bisik.server.rest._util import ApiRoute, authenticated, endpoint, read_body
from bisik.server.rest._util import services as svc


@endpoint
async def put_backup(request: Request) -> Done:
    """Replace the account's encrypted backup with a newer version."""
    device = await authenticated(request)
    req = await read_body(request, BackupPut, limit=MAX_BACKUP_BYTES + 4096)
    return await svc(request).backups.put(device, req)


@endpoint
async def backup_challenge(request: Request) -> ChallengeResponse:
    """Start fetching a backup: a challenge to sign with the recovery key's auth key."""
    req = await read_body(request, BackupChallengeRequest)
    return await svc(request).backups.challenge(req)


@endpoint
async def fetch_backup(request: Request) -> BackupBlob:
    """The encrypted backup, for a signature by the recovery key's auth key."""
    req = await read_body(request, BackupFetchRequest)
    return await svc(request).backups.fetch(req)


API: list[ApiRoute] = [
    ("PUT", "/v1/backup", put_backup, BackupPut, Done, True),
    (
        "POST",
        "/v1/backup/challenge",
        backup_challenge,
        BackupChallengeRequest,
        ChallengeResponse,
        False,
    ),
    ("POST", "/v1/backup/fetch", fetch_backup, BackupFetchRequest, BackupBlob, False),
]
