"""Encrypted attachments: stream a file up in resumable parts, and down again verified.

Upload: the file (an image first loses its metadata, ``_media``) is encrypted
with a fresh key (``bisik.crypto`` attachment cipher) as it is read, in blocks, and
sent in parts of the server's ``part_size``. After a dropped connection the client
asks the server how much it holds and resumes there: the cipher is deterministic
per chunk, so it re-encrypts from the chunk containing that offset. The key, the
SHA-256 of the ciphertext, the name and the type then go inside the E2EE message.

Download: the ciphertext streams into a hidden temporary file beside the target,
each 64 KiB chunk authenticated before its plaintext is written; the file gets its
real name only after the digest, the size and the final chunk all check out. A
corrupted or truncated blob leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

from bisik.client._actions import Actions
from bisik.client._attachment_info import AttachmentInfo
from bisik.client._devices import DeviceDirectory
from bisik.client._errors import ClientError, NotConnected
from bisik.client._media import PreparedFile, prepare_file
from bisik.client._membership import Membership
from bisik.client._models import DeviceStamp, Message
from bisik.client._outbox import Outbox
from bisik.client._timeline import VIEW_ONCE_MAX_MS, Timeline
from bisik.client._transport import Transport
from bisik.crypto import (
    AttachmentDecryptError,
    AttachmentDecryptor,
    AttachmentEncryptor,
    AttachmentKey,
    b64encode,
    ciphertext_size,
)
from bisik.crypto._attachment import CHUNK_SIZE, SEALED_CHUNK_SIZE
from bisik.proto import ErrorCode, ProtocolError, validate_username

log = logging.getLogger("bisik.client.attachments")

# Called with (bytes done, bytes in all) as a transfer moves; bytes of ciphertext.
Progress = Callable[[int, int], None]

READ_BLOCK = 1024 * 1024
RETRIES = 8
MAX_CAPTION_BYTES = 16 * 1024


class AttachmentError(ClientError):
    """An attachment could not be uploaded or downloaded, or did not verify."""


def _digest_text(hasher: Any) -> str:
    return b64encode(hasher.digest())


class _CipherReader:
    """Ciphertext of a file from any offset, read in blocks (runs in a thread)."""

    def __init__(self, source: IO[bytes], key: AttachmentKey, offset: int) -> None:
        chunk = offset // SEALED_CHUNK_SIZE
        source.seek(chunk * CHUNK_SIZE)
        self._src = source
        self._enc = AttachmentEncryptor(key, start_chunk=chunk)
        self._skip = offset - chunk * SEALED_CHUNK_SIZE
        self._buf = bytearray()
        self._eof = False

    def read(self, n: int) -> bytes:
        while len(self._buf) < n and not self._eof:
            data = self._src.read(READ_BLOCK)
            if data:
                self._buf += self._enc.update(data)
            else:
                self._buf += self._enc.finalize()
                self._eof = True
            if self._skip:
                drop = min(self._skip, len(self._buf))
                del self._buf[:drop]
                self._skip -= drop
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


async def _backoff(attempt: int, exc: Exception) -> None:
    if attempt >= RETRIES:
        raise AttachmentError(f"transfer failed after {attempt} attempts: {exc}") from exc
    log.info("transfer interrupted (attempt %d), resuming", attempt)
    await asyncio.sleep(min(0.2 * 2**attempt, 5.0))


async def upload(
    transport: Transport,
    prepared: PreparedFile,
    key: AttachmentKey,
    progress: Progress | None = None,
    *,
    ttl_ms: int | None = None,
) -> tuple[str, str]:
    """Encrypt and upload a prepared file; returns ``(blob_id, digest)``.

    Survives dropped connections and server restarts (up to ``RETRIES`` in a row),
    resuming from the last part the server stored.
    """
    total = ciphertext_size(prepared.size)
    body: dict[str, Any] = {"size": total}
    if ttl_ms:
        body["ttl_ms"] = ttl_ms
    status = await transport.request("POST", "/v1/blobs", body)
    blob_id = str(status["blob_id"])
    part_size = int(status["part_size"])
    hasher = hashlib.sha256()
    hashed = 0  # ciphertext bytes fed to the hasher, kept across resumes
    attempt = 0
    source: IO[bytes]
    if prepared.data is not None:
        source = io.BytesIO(prepared.data)
    else:
        source = await asyncio.to_thread(prepared.path.open, "rb")
    try:
        while True:
            received = int(status["received"])
            try:
                reader = _CipherReader(source, key, received)
                offset = received
                while offset < total:
                    part = await asyncio.to_thread(reader.read, min(part_size, total - offset))
                    if hashed < offset + len(part):
                        hasher.update(memoryview(part)[hashed - offset :])
                        hashed = offset + len(part)
                    status = await transport.request(
                        "PUT", f"/v1/blobs/{blob_id}?offset={offset}", raw=part
                    )
                    offset = int(status["received"])
                    attempt = 0
                    if progress is not None:
                        progress(offset, total)
                break
            except (NotConnected, ProtocolError) as exc:
                if isinstance(exc, ProtocolError) and exc.code not in (
                    ErrorCode.OFFSET_MISMATCH,
                    ErrorCode.BAD_REQUEST,
                    ErrorCode.INTERNAL,
                ):
                    raise
                attempt += 1
                await _backoff(attempt, exc)
                status = await _status_when_back(transport, blob_id, attempt)
    finally:
        source.close()
    if hashed != total:
        raise AttachmentError(f"uploaded {hashed} bytes, expected {total}")
    return blob_id, _digest_text(hasher)


async def _status_when_back(transport: Transport, blob_id: str, attempt: int) -> dict[str, Any]:
    while True:
        try:
            return await transport.request("GET", f"/v1/blobs/{blob_id}")
        except NotConnected as exc:
            attempt += 1
            await _backoff(attempt, exc)


_UNSAFE = re.compile(r"[^\w.\- ()+,]")


def safe_name(name: str) -> str:
    """A file name from a message, made safe to create: no path, no control chars."""
    base = _UNSAFE.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1]).strip(" .")
    return base[:200] or "attachment"


def target_path(info: AttachmentInfo, out: Path | None, default_dir: Path) -> Path:
    if out is None:
        return default_dir / safe_name(info.name)
    if out.is_dir():
        return out / safe_name(info.name)
    return out


class _Download:
    """One download's state, kept across resumed requests: offset, hash, decryptor."""

    def __init__(self, transport: Transport, info: AttachmentInfo, fd: int) -> None:
        self.transport = transport
        self.blob_id = info.blob_id
        self.total = ciphertext_size(info.size)
        self.received = 0
        # The server answered the last request (and then maybe cut it short).
        self.answered = False
        self.hasher = hashlib.sha256()
        self._dec = AttachmentDecryptor(AttachmentKey.from_base64(info.key))
        self._fd = fd

    def _write(self, data: bytes) -> None:
        # In a worker thread: decrypt (each chunk authenticated) and write.
        plain = self._dec.update(data)
        if plain:
            os.write(self._fd, plain)

    async def _take(self, data: bytearray, progress: Progress | None) -> None:
        self.hasher.update(data)
        await asyncio.to_thread(self._write, bytes(data))
        self.received += len(data)
        data.clear()
        if progress is not None:
            progress(self.received, self.total)

    def finish(self) -> None:
        os.write(self._fd, self._dec.finalize())
        os.fsync(self._fd)

    async def fetch(self, progress: Progress | None) -> None:
        """Stream the rest of the blob (a ``Range`` request after the first)."""
        buf = bytearray()
        for attempt in range(2):
            headers = {"Authorization": f"Bearer {await self.transport.token()}"}
            if self.received:
                headers["Range"] = f"bytes={self.received}-"
            try:
                async with self.transport.http.stream(
                    "GET", f"/v1/blobs/{self.blob_id}/content", headers=headers, timeout=120.0
                ) as resp:
                    if resp.status_code >= 400:
                        err = _error_of(resp.status_code, await resp.aread())
                        if attempt == 0 and err.code in (
                            ErrorCode.TOKEN_EXPIRED,
                            ErrorCode.UNAUTHORIZED,
                        ):
                            self.transport.forget_token()
                            continue
                        raise err
                    self.answered = True
                    async for chunk in resp.aiter_raw():
                        buf += chunk
                        if self.received + len(buf) > self.total:
                            raise AttachmentError("blob is larger than the message says")
                        if len(buf) >= READ_BLOCK:
                            await self._take(buf, progress)
                    if buf:
                        await self._take(buf, progress)
                    return
            except httpx.TransportError as exc:
                # Keep what arrived; the caller resumes from there.
                if buf:
                    await self._take(buf, progress)
                raise NotConnected(f"download interrupted at {self.received}: {exc!r}") from exc


def _error_of(status: int, body: bytes) -> ProtocolError:
    try:
        return ProtocolError.from_body(json.loads(body))
    except ValueError:
        return ProtocolError(ErrorCode.INTERNAL, f"HTTP {status}")


async def download(
    transport: Transport,
    info: AttachmentInfo,
    dest: Path,
    progress: Progress | None = None,
) -> Path:
    """Download, verify and decrypt an attachment to ``dest``; returns ``dest``.

    Raises:
        AttachmentError: the blob is gone, or its bytes do not verify (nothing is
            written to ``dest`` then).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    ok = False
    try:
        job = _Download(transport, info, fd)
        attempt = stalls = 0
        while True:
            before = job.received
            job.answered = False
            try:
                await job.fetch(progress)
                break
            except NotConnected as exc:
                if job.received > before:
                    attempt = stalls = 0
                elif job.answered:
                    # Answered, then ended at the same byte twice: the server
                    # holds less than it promised.
                    stalls += 1
                    if stalls >= 2:
                        raise AttachmentError(f"the blob ends early, at byte {before}") from exc
                attempt += 1
                await _backoff(attempt, exc)
        if job.received != job.total:
            raise AttachmentError(f"blob is {job.received} bytes, the message says {job.total}")
        if _digest_text(job.hasher) != info.digest:
            raise AttachmentError("blob does not match the digest in the message")
        await asyncio.to_thread(job.finish)
        ok = True
    except AttachmentDecryptError as exc:
        raise AttachmentError(f"attachment is corrupted: {exc}") from exc
    except ProtocolError as exc:
        raise AttachmentError(f"cannot download the attachment: {exc}") from exc
    finally:
        os.close(fd)
        if ok:
            os.replace(tmp, dest)
        else:
            tmp.unlink(missing_ok=True)
    return dest


class Attachments:
    """Sending and opening attachments."""

    def __init__(
        self,
        *,
        timeline: Timeline,
        outbox: Outbox,
        membership: Membership,
        actions: Actions,
        me: DeviceStamp,
        transport: Transport,
        devices: DeviceDirectory,
        home: Path,
    ) -> None:
        self._timeline = timeline
        self._store = timeline.db
        self._outbox = outbox
        self._membership = membership
        self._actions = actions
        self.username = me.username
        self._transport = transport
        self._devices = devices
        self._home = home

    async def send_file(
        self,
        peer: str,
        path: Path,
        *,
        caption: str = "",
        progress: Progress | None = None,
        strip_metadata: bool = True,
        reply_to: str | None = None,
        view_once: bool = False,
    ) -> Message:
        """Encrypt and upload a file, then queue a message to ``peer`` (a user or a
        ``#group``) that carries its key.

        The conversation's disappearing timer applies (the server deletes the blob
        by the message's hard cap); a ``view_once`` file can be opened once by each
        recipient (``download_attachment``), then it is deleted like an expired message.

        Images lose their EXIF/XMP metadata (``strip_metadata=False`` keeps the
        file byte for byte) and gain width, height, a blurhash and a thumbnail.
        Needs a connection for the upload; the message itself then goes through
        the outbox like any other.

        Args:
            progress: called with ``(bytes uploaded, bytes in all)``.

        Raises:
            ProtocolError: ``quota_exceeded``, ``blob_too_large``, ``unknown_user``.
            AttachmentError: the upload failed after retries.
        """
        if not peer.startswith("#"):
            validate_username(peer)
        caption_bytes = len(caption.encode())
        if caption_bytes > MAX_CAPTION_BYTES:
            raise ClientError(f"caption too long ({MAX_CAPTION_BYTES:,} bytes at most)")
        conversation = self._membership.conversation_id(peer)
        extras = self._timeline.outgoing_extras(conversation, reply_to)
        if view_once:
            extras["view_once"] = True
            extras.setdefault("ttl_ms", VIEW_ONCE_MAX_MS)
        route: dict[str, Any]
        if peer.startswith("#"):
            conversation, route = self._membership.route(peer)
        else:
            await self._devices.recipient_devices(peer, refresh=False)
            route = {"to": peer}
        try:
            prepared = await asyncio.to_thread(prepare_file, path, strip_metadata=strip_metadata)
        except OSError as exc:
            raise AttachmentError(f"cannot read {path}: {exc.strerror or exc}") from None
        key = AttachmentKey.generate()
        blob_id, digest = await upload(
            self._transport, prepared, key, progress, ttl_ms=extras.get("ttl_ms")
        )
        info = AttachmentInfo(
            blob_id=blob_id,
            key=key.to_base64(),
            digest=digest,
            size=prepared.size,
            name=safe_name(prepared.name),
            mime=prepared.mime,
            kind=prepared.kind,
            width=prepared.width,
            height=prepared.height,
            blurhash=prepared.blurhash,
            thumbnail=prepared.thumbnail,
            duration_ms=prepared.duration_ms,
            waveform=prepared.waveform,
        )
        # The sender keeps its own file as it was (not the re-encoded upload).
        local = None if prepared.stripped else str(prepared.path)
        with self._store.transaction():
            message = self._outbox.queue_message(
                conversation, caption, route, {"attachment": info.model_dump(), **extras}
            )
            self._timeline.rows.put_attachment(
                self.username, message.id, info.model_dump_json(), local
            )
        return dataclasses.replace(message, attachment=info)

    def attachment(self, message_id: str) -> tuple[AttachmentInfo, Path | None] | None:
        """The attachment of a message (by id), and where it is saved if it is."""
        stored = self._timeline.rows.attachment(message_id)
        if stored is None:
            return None
        local = stored.local_path
        return AttachmentInfo.model_validate_json(stored.info), Path(local) if local else None

    async def download_attachment(
        self, message_id: str, out: Path | None = None, *, progress: Progress | None = None
    ) -> Path:
        """Fetch, verify and decrypt a message's attachment.

        Args:
            out: a file or a directory; default: ``downloads/`` in the profile.
            progress: called with ``(bytes downloaded, bytes in all)``.

        Returns:
            Where the file was saved. Nothing is saved unless it verified.

        Raises:
            AttachmentError: no such attachment, gone from the server, or corrupted.
        """
        found = self.attachment(message_id)
        if found is None:
            raise AttachmentError(f"message {message_id} has no attachment")
        info, _ = found
        message = self._timeline.find(message_id)
        view_once = message is not None and message.view_once
        if view_once:
            assert message is not None
            if message.direction == "out":
                raise AttachmentError("a view-once file is for its recipients only")
            if self._timeline.view_once_opened(message):
                raise AttachmentError("this view-once file was already opened")
            out = None  # inside the profile, so it is deleted with the message
        dest = target_path(info, out, self._home / "downloads")
        await download(self._transport, info, dest, progress)
        with self._store.transaction():
            self._timeline.rows.set_attachment_path(message_id, str(dest.resolve()))
            if view_once:
                assert message is not None
                self._actions.opened_view_once(message)
        return dest

    async def delete_attachment(self, message_id: str) -> None:
        """Forget a message's attachment here and, if this account uploaded it,
        delete its blob from the server at once (the server's expiry does it otherwise)."""
        stored = self._timeline.rows.attachment(message_id)
        if stored is None:
            return
        info = AttachmentInfo.model_validate_json(stored.info)
        if stored.sender == self.username:
            with contextlib.suppress(ProtocolError):
                await self._transport.request("DELETE", f"/v1/blobs/{info.blob_id}")
        with self._store.transaction():
            self._timeline.rows.forget_attachment(message_id)

    async def attachment_usage(self) -> dict[str, int]:
        """Bytes of attachments this account stores on the server, and its limits."""
        answer = await self._transport.request("GET", "/v1/blobs/usage")
        return {k: int(v) for k, v in answer.items()}
