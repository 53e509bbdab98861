"""Wire models of the attachment blob store (``/v1/blobs``).

The server sees only sizes and opaque ciphertext: the key, digest, name and type
of a file travel inside the end-to-end encrypted message that points at the blob.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from bisik.proto._models import TtlMs, _Model

# 32 random bytes, URL-safe base64: the only handle on a blob, unguessable.
BlobId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$")]
# The largest blob any server accepts; each server sets its own (smaller) limit.
MAX_BLOB_BYTES = 2**40


class BlobCreate(_Model):
    """Start an upload of ``size`` bytes of ciphertext."""

    size: int = Field(ge=1, le=MAX_BLOB_BYTES)
    # For a disappearing message: delete the blob this long after upload at the latest.
    ttl_ms: TtlMs | None = None


class BlobStatus(_Model):
    """An upload's progress: send parts of ``part_size`` bytes (the last may be
    shorter) at ``offset=received`` until ``received == size``."""

    blob_id: str
    size: int
    received: int
    part_size: int
    complete: bool
    expires_at: int  # unix milliseconds


class BlobUsage(_Model):
    """What the calling account stores (reserved by uploads in progress too)."""

    used: int
    quota: int
    max_blob: int
