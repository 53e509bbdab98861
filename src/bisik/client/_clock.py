"""The client's one clock: milliseconds since the epoch.

Every service that dates something (messages, timers, receipts, expiry, device
lists) takes it in its constructor, so a test can move time by hand
(``ManualClock``) instead of patching a module's ``time``. Throttles and
intervals that only measure elapsed time (backup pacing, typing, key requests)
use ``time.monotonic``, which a wall-clock change must not move.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> int:
        """Milliseconds since the epoch."""
        ...


def system_clock() -> int:
    return int(time.time() * 1000)


class ManualClock:
    """A clock that moves only when told to (for tests and simulations)."""

    def __init__(self, start_ms: int | None = None) -> None:
        self.now = system_clock() if start_ms is None else start_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)
