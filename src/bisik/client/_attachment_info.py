"""What an attachment message carries inside its E2EE payload."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

AttachmentKind = Literal["file", "image", "video", "voice"]


class AttachmentInfo(BaseModel):
    """An encrypted file on the server, and everything needed to show and open it.

    Only recipients of the message see this: the server holds the ciphertext
    under ``blob_id`` and never the key, digest, name or type. ``width``,
    ``height`` and ``blurhash`` let a UI reserve an image's exact space and paint
    a placeholder before anything is downloaded; ``thumbnail`` is a small JPEG
    (base64) that rides inside the encrypted message itself.
    """

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    blob_id: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")
    key: str = Field(pattern=r"^[A-Za-z0-9+/]{43}$")
    # SHA-256 of the whole ciphertext, unpadded base64.
    digest: str = Field(pattern=r"^[A-Za-z0-9+/]{43}$")
    size: int = Field(ge=0, le=2**40)
    name: str = Field(min_length=1, max_length=255)
    mime: str = Field(min_length=1, max_length=255)
    kind: AttachmentKind = "file"
    width: int | None = Field(default=None, ge=1, le=1_000_000)
    height: int | None = Field(default=None, ge=1, le=1_000_000)
    blurhash: str | None = Field(default=None, max_length=128)
    thumbnail: str | None = Field(default=None, max_length=48 * 1024)
    duration_ms: int | None = Field(default=None, ge=0, le=2**31)
    waveform: list[Annotated[int, Field(ge=0, le=255)]] | None = Field(default=None, max_length=256)

    def __repr__(self) -> str:
        return f"AttachmentInfo({self.kind}, {self.mime}, {self.size} bytes)"

    def public_json(self) -> dict[str, Any]:
        """Metadata for display (``history --json``): never the key or the thumbnail."""
        data = self.model_dump(exclude={"key", "thumbnail", "digest"}, exclude_none=True)
        data["has_thumbnail"] = self.thumbnail is not None
        return data
