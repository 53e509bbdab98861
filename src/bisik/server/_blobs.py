"""Where attachment ciphertext lives: a local directory or S3-compatible storage.

A backend stores opaque bytes under a blob id and knows nothing of the database:
the blob store (``stores/blobs.py``) records how much of each upload is stored,
and commits a part only after the backend has made it durable. Uploads arrive in
numbered parts of a fixed size; a part sent again (after a dropped connection)
simply replaces the earlier, partial one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from bisik.server._config import ServerConfig

READ_CHUNK = 1024 * 1024


class BlobBackend(Protocol):
    async def start(self, blob_id: str) -> str | None:
        """Prepare an upload; returns a reference to keep with the row (S3 upload id)."""
        ...

    async def write_part(
        self, blob_id: str, ref: str | None, index: int, offset: int, data: AsyncIterator[bytes]
    ) -> int:
        """Store part ``index`` (starting at byte ``offset``) durably; returns its length."""
        ...

    async def complete(self, blob_id: str, ref: str | None) -> None:
        """Every part is stored: make the blob readable."""
        ...

    def read(self, blob_id: str, start: int) -> AsyncIterator[bytes]:
        """The blob's bytes from ``start`` on."""
        ...

    async def delete(self, blob_id: str, ref: str | None, complete: bool) -> None:
        """Remove the blob (or the unfinished upload); a missing one is no error."""
        ...

    async def close(self) -> None: ...


class LocalBlobBackend:
    """Files under ``root/<2 chars>/<blob id>`` (``.part`` while uploading), readable
    by the server's user only (files 0600, directories 0700)."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, blob_id: str, complete: bool) -> Path:
        name = blob_id if complete else blob_id + ".part"
        return self._root / blob_id[:2] / name

    async def start(self, blob_id: str) -> str | None:
        path = self._path(blob_id, False)
        # ``mkdir(parents=True)`` gives the parents it makes the umask's mode.
        self._root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.parent.mkdir(exist_ok=True, mode=0o700)
        path.touch(mode=0o600)
        return None

    async def write_part(
        self, blob_id: str, ref: str | None, index: int, offset: int, data: AsyncIterator[bytes]
    ) -> int:
        path = self._path(blob_id, False)
        fd = os.open(path, os.O_WRONLY)
        written = 0
        try:
            buf = bytearray()
            async for chunk in data:
                buf += chunk
                if len(buf) >= READ_CHUNK:
                    await asyncio.to_thread(os.pwrite, fd, bytes(buf), offset + written)
                    written += len(buf)
                    buf.clear()
            if buf:
                await asyncio.to_thread(os.pwrite, fd, bytes(buf), offset + written)
                written += len(buf)
            # Durable before the store records the part as received.
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
        return written

    async def complete(self, blob_id: str, ref: str | None) -> None:
        await asyncio.to_thread(os.replace, self._path(blob_id, False), self._path(blob_id, True))

    async def read(self, blob_id: str, start: int) -> AsyncIterator[bytes]:
        with open(self._path(blob_id, True), "rb") as f:  # noqa: ASYNC230 (reads go to a thread)
            f.seek(start)
            while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
                yield chunk

    async def delete(self, blob_id: str, ref: str | None, complete: bool) -> None:
        for done in (True, False):
            with contextlib.suppress(FileNotFoundError):
                self._path(blob_id, done).unlink()

    async def close(self) -> None:
        return None


class S3BlobBackend:
    """An S3-compatible bucket (AWS, MinIO, Garage, moto...): one multipart upload
    per blob, one S3 part per upload part. A part is buffered in memory while it
    arrives (S3 needs its length up front), so memory per upload is one part."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        prefix: str = "blobs/",
    ) -> None:
        import aioboto3

        self._bucket = bucket
        self._prefix = prefix
        self._session = aioboto3.Session()
        self._endpoint_url = endpoint_url
        self._region = region
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()

    async def _s3(self) -> Any:
        async with self._lock:
            if self._client is None:
                self._client = await self._stack.enter_async_context(
                    self._session.client(
                        "s3", endpoint_url=self._endpoint_url, region_name=self._region
                    )
                )
            return self._client

    def _key(self, blob_id: str) -> str:
        return self._prefix + blob_id

    async def start(self, blob_id: str) -> str | None:
        s3 = await self._s3()
        answer = await s3.create_multipart_upload(Bucket=self._bucket, Key=self._key(blob_id))
        return str(answer["UploadId"])

    async def write_part(
        self, blob_id: str, ref: str | None, index: int, offset: int, data: AsyncIterator[bytes]
    ) -> int:
        buf = bytearray()
        async for chunk in data:
            buf += chunk
        s3 = await self._s3()
        await s3.upload_part(
            Bucket=self._bucket,
            Key=self._key(blob_id),
            UploadId=ref,
            PartNumber=index + 1,
            Body=bytes(buf),
        )
        return len(buf)

    async def complete(self, blob_id: str, ref: str | None) -> None:
        s3 = await self._s3()
        parts: list[dict[str, Any]] = []
        marker = 0
        while True:
            page = await s3.list_parts(
                Bucket=self._bucket, Key=self._key(blob_id), UploadId=ref, PartNumberMarker=marker
            )
            parts += [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in page["Parts"]]
            if not page.get("IsTruncated"):
                break
            marker = int(page["NextPartNumberMarker"])
        await s3.complete_multipart_upload(
            Bucket=self._bucket,
            Key=self._key(blob_id),
            UploadId=ref,
            MultipartUpload={"Parts": parts},
        )

    async def read(self, blob_id: str, start: int) -> AsyncIterator[bytes]:
        s3 = await self._s3()
        extra = {"Range": f"bytes={start}-"} if start else {}
        answer = await s3.get_object(Bucket=self._bucket, Key=self._key(blob_id), **extra)
        body = answer["Body"]
        try:
            while chunk := await body.read(READ_CHUNK):
                yield chunk
        finally:
            body.close()

    async def delete(self, blob_id: str, ref: str | None, complete: bool) -> None:
        s3 = await self._s3()
        if complete:
            await s3.delete_object(Bucket=self._bucket, Key=self._key(blob_id))
        elif ref is not None:
            with contextlib.suppress(s3.exceptions.NoSuchUpload):
                await s3.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key(blob_id), UploadId=ref
                )

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None


def backend_for(config: ServerConfig) -> BlobBackend:
    """The backend a server configuration asks for (S3 when a bucket is set)."""
    if config.s3_bucket:
        return S3BlobBackend(
            config.s3_bucket, endpoint_url=config.s3_endpoint_url, region=config.s3_region
        )
    return LocalBlobBackend(config.blob_dir or config.data_dir / "blobs")
