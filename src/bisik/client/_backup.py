"""The encrypted account backup on the server, kept current: uploaded after
changes, at most every ``BACKUP_INTERVAL_S`` (longer for a large one), and on
close."""

from __future__ import annotations

import logging
import time

from bisik.client._recovery import build_backup
from bisik.client._store import LocalStore
from bisik.client._transport import Transport
from bisik.client._worker import Worker
from bisik.proto import ProtocolError

# The backup follows changes at most this often (and on close); a larger one
# waits longer, so that uploading it again and again averages at most
# BACKUP_BYTES_PER_S (figures in docs/benchmarks.md).
BACKUP_INTERVAL_S = 60.0
BACKUP_BYTES_PER_S = 16 * 1024

log = logging.getLogger("bisik.client")


class Backup:
    def __init__(self, db: LocalStore, username: str, transport: Transport, worker: Worker) -> None:
        self._db = db
        self._username = username
        self._transport = transport
        self._worker = worker
        self._dirty = False
        self._at = 0.0
        self._wait_s = BACKUP_INTERVAL_S

    @property
    def dirty(self) -> bool:
        """Something changed since the last upload."""
        return self._dirty

    def changed(self) -> None:
        self._dirty = True

    async def upload(self) -> bool:
        """Upload the encrypted account backup; ``False`` if there is no recovery key."""
        body = build_backup(self._db, self._username)
        if body is None:
            return False
        await self._transport.request("PUT", "/v1/backup", body)
        self._dirty = False
        self._at = time.monotonic()
        self._wait_s = max(BACKUP_INTERVAL_S, len(body["ciphertext"]) / BACKUP_BYTES_PER_S)
        return True

    def due_in(self) -> float:
        """Seconds until a change may be uploaded (0: now)."""
        return max(0.0, self._at + self._wait_s - time.monotonic())

    async def maybe_upload(self) -> None:
        """Upload if something changed and the interval has passed (after each
        worker step)."""
        if self._dirty and time.monotonic() - self._at > self._wait_s:
            try:
                # Up to 12 MiB on its way: what is pushed meanwhile is opened.
                await self._worker.waiting(self.upload())
            except ProtocolError as exc:
                # Refused for now (server storage full, rate limit): the next
                # interval tries again; the backup stays marked dirty.
                log.info("backup refused for now (%s)", exc.code)
                self._at = time.monotonic()
