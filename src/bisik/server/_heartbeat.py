"""Engine.IO's heartbeat for every socket of a server on one timer (no library code here)."""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

# The heartbeat wakes up at most once per slot of this many seconds, for every
# socket whose ping or pong deadline falls in it: a ping or a timeout comes up to
# this much late, never early.
TICK_S = 0.05


class Beating(Protocol):
    """What the heartbeat asks of a socket."""

    def heartbeat_ping(self) -> bool:
        """Send a ping now. Returns: whether one went out (and a pong is now awaited)."""
        ...

    def heartbeat_overdue(self) -> None:
        """The pong did not come in time: drop the connection."""
        ...


def _take_due(deadlines: dict[Beating, float], now: float) -> list[Beating]:
    """Remove and return the sockets at the front of ``deadlines`` that are due by ``now``."""
    due = []
    for s, deadline in deadlines.items():
        if deadline > now:
            break
        due.append(s)
    for s in due:
        del deadlines[s]
    return due


class Heartbeat:
    """Every socket's pings on one timer per server, instead of a ``call_later`` per
    socket (a TimerHandle, a bound method and a context each).

    A socket waits in ``_pings`` until its next ping is due, then in ``_pongs``
    until its pong is overdue; in neither once closed. Each maps sockets to
    deadlines on the loop's clock, each deadline that clock plus the same delay:
    insertion order is deadline order, so a tick reads only the due entries at
    the front, and a socket is taken out in O(1). :meth:`close` cancels the timer.
    """

    __slots__ = ("_interval", "_loop", "_pings", "_pongs", "_timeout", "_timer", "_timer_at")

    def __init__(self, interval: float, timeout: float) -> None:
        self._interval = interval
        self._timeout = timeout
        self._pings: dict[Beating, float] = {}
        self._pongs: dict[Beating, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def ping_later(self, s: Beating) -> None:
        """Ping ``s`` after the interval (at connect, and on each pong)."""
        self.forget(s)  # then in at the end, where its deadline belongs
        loop = asyncio.get_running_loop()
        self._pings[s] = deadline = loop.time() + self._interval
        self._arm(loop, deadline)

    def forget(self, s: Beating) -> None:
        self._pings.pop(s, None)
        self._pongs.pop(s, None)

    def close(self) -> None:
        """Forget every socket and cancel the timer (the server shuts down)."""
        self._pings.clear()
        self._pongs.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __len__(self) -> int:
        return len(self._pings) + len(self._pongs)

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        at = math.ceil(deadline / TICK_S) * TICK_S
        if self._timer is not None:
            if self._loop is loop and self._timer_at <= at:
                return
            self._timer.cancel()
        self._loop = loop
        self._timer_at = at
        self._timer = loop.call_at(at, self._tick)

    def _tick(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        # The loop may run a timer a clock tick early: what was due by then is due.
        now = max(loop.time(), self._timer_at)
        for s in _take_due(self._pings, now):
            if s.heartbeat_ping():
                self._pongs[s] = now + self._timeout
        for s in _take_due(self._pongs, now):
            s.heartbeat_overdue()
        fronts = [next(iter(d.values())) for d in (self._pings, self._pongs) if d]
        if fronts:
            self._arm(loop, min(fronts))
