"""Looking at a file before it is encrypted: type, image size, placeholder, thumbnail.

Images are re-saved without their metadata (EXIF, with its GPS position, camera
serial and time; XMP; text chunks) unless the caller opts out: the rotation the
EXIF asked for is applied to the pixels first, so the picture still shows upright.
All of this is synchronous and runs in a worker thread.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import warnings
from dataclasses import dataclass
from pathlib import Path

import blurhash
from PIL import Image, ImageOps, UnidentifiedImageError

from bisik.client._attachment_info import AttachmentKind
from bisik.client._av import probe

THUMBNAIL_MAX_PX = 160
THUMBNAIL_MAX_BYTES = 24 * 1024
# Formats we re-encode to strip metadata; others (animated GIF...) are sent as they are.
_STRIPPABLE = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_IMAGE_MIME = {**_STRIPPABLE, "GIF": "image/gif", "BMP": "image/bmp", "TIFF": "image/tiff"}


@dataclass
class PreparedFile:
    """A file ready to encrypt: ``data`` (a re-encoded image) or ``path`` as it is."""

    path: Path
    size: int
    name: str
    mime: str
    kind: AttachmentKind = "file"
    data: bytes | None = None
    width: int | None = None
    height: int | None = None
    blurhash: str | None = None
    thumbnail: str | None = None
    stripped: bool = False
    duration_ms: int | None = None
    waveform: list[int] | None = None


def _thumbnail(image: Image.Image) -> str | None:
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMBNAIL_MAX_PX, THUMBNAIL_MAX_PX))
    for quality in (70, 50, 30):
        out = io.BytesIO()
        thumb.save(out, "JPEG", quality=quality)
        if out.tell() <= THUMBNAIL_MAX_BYTES:
            return base64.b64encode(out.getvalue()).decode()
    return None


def _blurhash(image: Image.Image) -> str:
    small = image.convert("RGB")
    small.thumbnail((64, 64))
    x, y = (4, 3) if small.width >= small.height else (3, 4)
    with warnings.catch_warnings():
        # blurhash-python 1.2 still reads pixels with Image.getdata (deprecated in Pillow 13).
        warnings.filterwarnings("ignore", "Image.Image.getdata", DeprecationWarning)
        return str(blurhash.encode(small, x, y))


def _strip(image: Image.Image, fmt: str) -> bytes:
    """Re-encode without metadata. Only the pixels (and colour profile) survive."""
    out = io.BytesIO()
    params: dict[str, object] = {}
    if "icc_profile" in image.info:
        params["icc_profile"] = image.info["icc_profile"]
    if fmt == "JPEG":
        if image.mode not in ("RGB", "L", "CMYK"):
            image = image.convert("RGB")
        params["quality"] = 92
    elif fmt == "WEBP":
        params["quality"] = 92
    image.save(out, fmt, **params)
    return out.getvalue()


def prepare_file(path: Path, *, strip_metadata: bool = True) -> PreparedFile:
    """Inspect (and for images, clean) a file before upload.

    Raises:
        OSError: the file cannot be read.
    """
    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(2, "not a file", str(path))
    size = path.stat().st_size
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    prepared = PreparedFile(path=path, size=size, name=path.name, mime=mime)
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        if prepared.mime.startswith(("audio/", "video/")):
            _add_av(prepared)
        return prepared
    with image:
        fmt = str(image.format)
        animated = bool(getattr(image, "is_animated", False))
        prepared.kind = "image"
        prepared.mime = _IMAGE_MIME.get(fmt, mime)
        shown: Image.Image = image
        if strip_metadata and fmt in _STRIPPABLE and not animated:
            shown = ImageOps.exif_transpose(image) or image
            prepared.data = _strip(shown, fmt)
            prepared.size = len(prepared.data)
            prepared.stripped = True
        prepared.width, prepared.height = shown.size
        prepared.blurhash = _blurhash(shown)
        prepared.thumbnail = _thumbnail(shown)
    return prepared


def _add_av(prepared: PreparedFile) -> None:
    """Duration, size and a poster frame (video) or a waveform (voice), if FFmpeg reads it.

    The file itself is sent as it is: its container metadata is not stripped.
    """
    info = probe(prepared.path)
    if info is None:
        return
    prepared.kind = "video" if info.kind == "video" else "voice"
    prepared.duration_ms = info.duration_ms
    prepared.waveform = info.waveform
    prepared.width, prepared.height = info.width, info.height
    if info.poster is not None:
        prepared.blurhash = _blurhash(info.poster)
        prepared.thumbnail = _thumbnail(info.poster)
