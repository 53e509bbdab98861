"""What a file becomes before encryption: type, size, placeholder, thumbnail, no EXIF."""

from __future__ import annotations

import base64
import io
import math
import struct
import wave
from pathlib import Path

import pytest
from PIL import Image

from bisik.client._media import prepare_file


def make_wav(path: Path, seconds: float = 2.0, rate: int = 8000) -> None:
    """A tone that grows louder: its waveform must rise."""
    frames = bytearray()
    total = int(seconds * rate)
    for i in range(total):
        amplitude = 30000 * i / total
        frames += struct.pack("<h", int(amplitude * math.sin(2 * math.pi * 440 * i / rate)))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))


def make_mp4(path: Path, size: tuple[int, int] = (64, 48), frames: int = 10) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_image(Image.new("RGB", size, (i * 20, 100, 200)))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_jpeg_loses_exif_and_is_turned_upright(tmp_path: Path) -> None:
    src = tmp_path / "p.jpg"
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 270
    exif[0x8825] = {1: "N", 2: (1.0, 2.0, 3.0)}
    Image.new("RGB", (40, 10), (1, 2, 3)).save(src, "JPEG", exif=exif.tobytes())
    prepared = prepare_file(src)
    assert prepared.stripped and prepared.data is not None
    assert (prepared.kind, prepared.mime, prepared.width, prepared.height) == (
        "image",
        "image/jpeg",
        10,
        40,
    )
    assert b"Exif" not in prepared.data
    assert prepared.size == len(prepared.data)
    assert prepared.blurhash
    assert prepared.thumbnail is not None
    thumb = Image.open(io.BytesIO(base64.b64decode(prepared.thumbnail)))
    assert thumb.size[0] < thumb.size[1]


def test_png_metadata_chunks_are_dropped(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    src = tmp_path / "p.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "secret-author")
    Image.new("RGBA", (5, 5)).save(src, pnginfo=info)
    prepared = prepare_file(src)
    assert prepared.data is not None and b"secret-author" not in prepared.data
    assert (prepared.width, prepared.height) == (5, 5)
    kept = prepare_file(src, strip_metadata=False)
    assert kept.data is None and kept.stripped is False


def test_plain_and_unreadable_files_stay_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    fake = tmp_path / "broken.jpg"
    fake.write_bytes(b"\xff\xd8 not really a jpeg")
    fake_audio = tmp_path / "broken.mp3"
    fake_audio.write_bytes(b"nope")
    for path, mime in ((text, "text/plain"), (fake, "image/jpeg"), (fake_audio, "audio/mpeg")):
        prepared = prepare_file(path)
        assert (prepared.kind, prepared.mime, prepared.data) == ("file", mime, None)
    with pytest.raises(FileNotFoundError):
        prepare_file(tmp_path / "missing.bin")


def test_voice_note_has_duration_and_rising_waveform(tmp_path: Path) -> None:
    pytest.importorskip("av")
    src = tmp_path / "voice.wav"
    make_wav(src)
    prepared = prepare_file(src)
    assert prepared.kind == "voice"
    assert prepared.duration_ms == 2000
    bars = prepared.waveform
    assert bars is not None and len(bars) == 64 and all(0 <= b <= 255 for b in bars)
    assert bars[-1] > bars[0] and bars[-1] > 200


def test_video_has_size_duration_and_poster(tmp_path: Path) -> None:
    src = tmp_path / "clip.mp4"
    make_mp4(src)
    prepared = prepare_file(src)
    assert (prepared.kind, prepared.mime, prepared.width, prepared.height) == (
        "video",
        "video/mp4",
        64,
        48,
    )
    assert prepared.duration_ms == 1000
    assert prepared.blurhash and prepared.thumbnail
