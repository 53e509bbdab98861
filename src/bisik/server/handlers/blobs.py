"""Attachment blobs: resumable uploads in parts, downloads by id, quotas and GC.

The server never sees what a blob holds: the client encrypts the file first and
sends its key only inside the E2EE message. A blob id is 32 random bytes; any
authenticated device that knows it may download the blob, which is how the
recipients of a message (and nobody else) find it. Only the device that started
an upload may add to it; any device of the uploading account may delete it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator

from bisik.proto import BlobCreate, BlobStatus, BlobUsage, Done, ErrorCode, ProtocolError
from bisik.server._blobs import BlobBackend
from bisik.server._clock import now_ms
from bisik.server._config import ServerConfig
from bisik.server.stores import DeviceRow
from bisik.server.stores.blobs import BlobRow, BlobStore

log = logging.getLogger("bisik.server.blobs")

GC_BATCH = 200


def _status(row: BlobRow) -> BlobStatus:
    return BlobStatus(
        blob_id=row.id,
        size=row.size,
        received=row.received,
        part_size=row.part_size,
        complete=row.complete,
        expires_at=row.expires_at,
    )


class BlobsHandler:
    def __init__(self, config: ServerConfig, store: BlobStore, backend: BlobBackend) -> None:
        self._config = config
        self._store = store
        self.backend = backend
        # One writer per upload in this process: a retried part waits for the
        # earlier attempt instead of writing the same bytes beside it.
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}

    async def _get(self, blob_id: str) -> BlobRow:
        row = await self._store.get(blob_id)
        if row is None or row.expires_at <= now_ms():
            raise ProtocolError(ErrorCode.BLOB_NOT_FOUND, "no such blob")
        return row

    async def usage(self, device: DeviceRow) -> BlobUsage:
        user_id = await self._store.user_pk(device.username)
        return BlobUsage(
            used=await self._store.usage(user_id),
            quota=self._config.blob_quota_bytes,
            max_blob=self._config.max_blob_bytes,
        )

    async def create(self, device: DeviceRow, req: BlobCreate) -> BlobStatus:
        """Start an upload, reserving its size in the account's quota.

        Raises:
            ProtocolError: ``blob_too_large`` over the per-file limit,
                ``quota_exceeded`` if the account's blobs would pass its quota.
        """
        cfg = self._config
        if req.size > cfg.max_blob_bytes:
            raise ProtocolError(
                ErrorCode.BLOB_TOO_LARGE, f"blobs are at most {cfg.max_blob_bytes} bytes"
            )
        user_id = await self._store.user_pk(device.username)
        blob_id = secrets.token_urlsafe(32)
        now = now_ms()
        ref = await self.backend.start(blob_id)
        ok = await self._store.create(
            blob_id=blob_id,
            user_id=user_id,
            device_pk=device.pk,
            size=req.size,
            part_size=cfg.blob_part_bytes,
            backend_ref=ref,
            quota=cfg.blob_quota_bytes,
            now=now,
            expires_at=now + min(cfg.upload_ttl_s * 1000, req.ttl_ms or cfg.upload_ttl_s * 1000),
            ttl_ms=req.ttl_ms,
        )
        if not ok:
            await self.backend.delete(blob_id, ref, False)
            raise ProtocolError(
                ErrorCode.QUOTA_EXCEEDED,
                f"this account may store {cfg.blob_quota_bytes} bytes of attachments",
            )
        row = await self._get(blob_id)
        return _status(row)

    async def status(self, device: DeviceRow, blob_id: str) -> BlobStatus:
        return _status(await self._get(blob_id))

    async def write_part(
        self, device: DeviceRow, blob_id: str, offset: int, length: int, data: AsyncIterator[bytes]
    ) -> BlobStatus:
        """Store the part that starts at ``offset`` (which must equal ``received``).

        ``length`` is the declared body length: ``part_size`` bytes, or the rest
        of the blob for the last part. A body that ends early (a dropped
        connection) stores nothing; the client resumes from ``received``.

        Raises:
            ProtocolError: ``not_your_upload``, ``offset_mismatch`` (the message
                carries the offset to resume from), ``bad_request`` for a wrong length.
        """
        lock = self._locks.setdefault(blob_id, asyncio.Lock())
        self._lock_users[blob_id] = self._lock_users.get(blob_id, 0) + 1
        try:
            async with lock:
                return await self._write_part(device, blob_id, offset, length, data)
        finally:
            self._lock_users[blob_id] -= 1
            if not self._lock_users[blob_id]:
                del self._lock_users[blob_id], self._locks[blob_id]

    async def _write_part(
        self, device: DeviceRow, blob_id: str, offset: int, length: int, data: AsyncIterator[bytes]
    ) -> BlobStatus:
        row = await self._get(blob_id)
        if row.device_pk != device.pk:
            raise ProtocolError(ErrorCode.NOT_YOUR_UPLOAD, "another device started this upload")
        if row.complete or offset != row.received:
            raise ProtocolError(
                ErrorCode.OFFSET_MISMATCH, f"resume at offset {row.received} of {row.size}"
            )
        expected = min(row.part_size, row.size - row.received)
        if length != expected:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"this part must be exactly {expected} bytes"
            )
        index = offset // row.part_size
        written = await self.backend.write_part(
            blob_id, row.backend_ref, index, offset, _exactly(data, expected)
        )
        if written != expected:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"part was {written}, not {expected} bytes")
        if not await self._store.advance(blob_id, offset, offset + written):
            raise ProtocolError(ErrorCode.OFFSET_MISMATCH, "another request stored this part")
        if offset + written == row.size:
            await self.backend.complete(blob_id, row.backend_ref)
            life = self._config.blob_ttl_s * 1000
            await self._store.mark_complete(blob_id, now_ms() + min(life, row.ttl_ms or life))
        return _status(await self._get(blob_id))

    async def open(
        self, device: DeviceRow, blob_id: str, start: int
    ) -> tuple[BlobRow, AsyncIterator[bytes]]:
        """A complete blob's bytes from ``start`` on, for any authenticated device."""
        row = await self._get(blob_id)
        if not row.complete:
            raise ProtocolError(ErrorCode.BLOB_INCOMPLETE, "this blob is still being uploaded")
        if not 0 <= start <= row.size:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "range starts past the end of the blob")
        return row, self.backend.read(blob_id, start)

    async def delete(self, device: DeviceRow, blob_id: str) -> Done:
        """Delete a blob of the caller's account (e.g. its message was deleted)."""
        row = await self._get(blob_id)
        if row.user_id != await self._store.user_pk(device.username):
            # Not "forbidden": whether someone else's blob exists is not the caller's business.
            raise ProtocolError(ErrorCode.BLOB_NOT_FOUND, "no such blob")
        await self._remove(row)
        return Done()

    async def _remove(self, row: BlobRow) -> None:
        # Row first: a blob whose row is gone is unreachable even if the
        # backend delete fails (it is then only wasted space, never readable).
        await self._store.delete(row.id)
        try:
            await self.backend.delete(row.id, row.backend_ref, row.complete)
        except Exception:
            log.exception("could not delete a blob from the storage backend")

    async def collect_garbage(self) -> int:
        """Delete expired blobs and abandoned uploads; returns how many."""
        count = 0
        while True:
            rows = await self._store.expired(now_ms(), GC_BATCH)
            for row in rows:
                await self._remove(row)
            count += len(rows)
            if len(rows) < GC_BATCH:
                return count

    async def run_gc(self) -> None:
        """Collect garbage every ``blob_gc_interval_s`` until cancelled."""
        while True:
            try:
                removed = await self.collect_garbage()
            except Exception:
                log.exception("blob garbage collection failed")
            else:
                if removed:
                    log.info("removed %d expired blobs", removed)
            await asyncio.sleep(self._config.blob_gc_interval_s)

    async def close(self) -> None:
        try:
            await self.backend.close()
        except Exception:
            log.exception("could not close the blob storage backend")


async def _exactly(data: AsyncIterator[bytes], length: int) -> AsyncIterator[bytes]:
    """Pass ``data`` through, refusing a body longer than ``length``."""
    seen = 0
    async for chunk in data:
        seen += len(chunk)
        if seen > length:
            raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, f"this part is {length} bytes")
        yield chunk
