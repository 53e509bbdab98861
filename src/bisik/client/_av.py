"""Video and voice-note metadata through PyAV (FFmpeg): duration, size, poster, waveform.

Best effort: a file that FFmpeg cannot read (or a machine without ``av``) is sent as
a plain file. Synchronous; runs in the same worker thread as ``_media``.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    import av.container

WAVEFORM_BARS = 64
# Longer recordings are not decoded for a waveform (it would take a while).
WAVEFORM_MAX_S = 15 * 60


@dataclass
class AvInfo:
    kind: str  # "video" or "voice"
    duration_ms: int | None = None
    width: int | None = None
    height: int | None = None
    poster: Image.Image | None = None
    waveform: list[int] | None = None


def probe(path: Path) -> AvInfo | None:
    """Read a video's size, duration and first frame, or an audio file's duration and
    waveform; ``None`` if it is neither (or unreadable)."""
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(str(path)) as container:
            duration = (
                int(container.duration * 1000 / av.time_base)
                if container.duration is not None
                else None
            )
            if container.streams.video:
                stream = container.streams.video[0]
                info = AvInfo("video", duration, stream.width or None, stream.height or None)
                for frame in container.decode(stream):
                    # Typed loosely: some PyAV releases leave ``to_image`` unannotated.
                    decoded: Any = frame
                    info.poster = decoded.to_image()
                    break
                return info
            if container.streams.audio:
                info = AvInfo("voice", duration)
                if duration is not None and duration <= WAVEFORM_MAX_S * 1000:
                    info.waveform = _waveform(container)
                return info
    except (av.FFmpegError, OSError, ValueError):
        return None
    return None


def _waveform(container: av.container.InputContainer) -> list[int]:
    """Peak level (0..255) of ``WAVEFORM_BARS`` equal slices of the first audio stream."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=8000)
    samples = array.array("h")
    for frame in container.decode(container.streams.audio[0]):
        for out in resampler.resample(frame):
            samples.frombytes(bytes(out.planes[0])[: out.samples * 2])
    if not samples:
        return [0] * WAVEFORM_BARS
    bars = []
    step = len(samples) / WAVEFORM_BARS
    for i in range(WAVEFORM_BARS):
        chunk = samples[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)]
        peak = max((abs(v) for v in chunk), default=0)
        bars.append(min(255, peak * 255 // 32767))
    return bars
