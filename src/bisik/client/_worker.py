"""The client's worker: one task that runs, in order, the steps that must not
interleave with each other (a sync, opening pushed envelopes, flushing the
outbox, group changes, key requests).

Steps are queued with ``submit`` and run one at a time by their handler. While
a step waits for the network (``waiting``), the worker may run its interlude
(opening envelopes that were pushed meanwhile), unless a step that those
envelopes must not overtake (``IN_ORDER``) is queued.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bisik.client._errors import NotConnected

log = logging.getLogger("bisik.client")
T = TypeVar("T")


class Step(enum.Enum):
    RESYNC = "resync"
    ENVELOPES = "envelopes"
    FLUSH = "flush"
    REPLENISH = "replenish"
    TYPING = "typing"
    EXPIRE = "expire"
    RECEIPTS = "receipts"
    DELETE_BLOBS = "delete_blobs"
    GROUP_CHANGED = "group_changed"
    KEY_REQUEST_OUT = "key_request_out"
    KEY_REQUEST_IN = "key_request_in"
    STOP = "stop"


# Steps that envelopes pushed after them must not overtake: a sync may fetch
# older messages than those, a group change may admit their sender.
IN_ORDER = frozenset({Step.RESYNC, Step.GROUP_CHANGED})

Handler = Callable[[Any], Awaitable[None]]


class Worker:
    """Runs queued steps one at a time in one task; owns the timers that queue them."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: asyncio.Queue[tuple[Step, Any]] = asyncio.Queue()
        self._handlers: dict[Step, Handler] = {}
        self._after: list[Callable[[], Awaitable[None]]] = []
        self._interlude: tuple[Callable[[], bool], Callable[[], Awaitable[None]]] | None = None
        self._in_order_due = 0
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._repeats: list[tuple[float, Callable[[], None]]] = []
        self._loops: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Future[Any]] = set()
        self._waiter: asyncio.Future[None] | None = None
        self._stopping = False

    # -- wiring ---------------------------------------------------------------------

    def handle(self, step: Step, handler: Handler) -> None:
        self._handlers[step] = handler

    def after_each(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` after every step (e.g. a backup that is due)."""
        self._after.append(hook)

    def repeat(self, seconds: float, tick: Callable[[], None]) -> None:
        """Call ``tick`` every ``seconds`` while the worker runs (it may queue steps)."""
        self._repeats.append((seconds, tick))

    def interlude(self, ready: Callable[[], bool], run: Callable[[], Awaitable[None]]) -> None:
        """What ``waiting`` runs meanwhile when ``ready()`` says there is something."""
        self._interlude = (ready, run)

    # -- queueing ---------------------------------------------------------------------

    def submit(self, step: Step, data: Any = None) -> None:
        if step in IN_ORDER:
            self._in_order_due += 1
        self._queue.put_nowait((step, data))

    def submit_later(self, delay: float, step: Step, data: Any = None) -> asyncio.TimerHandle:
        """Queue a step after ``delay`` seconds (cancelled by ``stop``)."""

        def fire() -> None:
            self._timers.discard(handle)
            self.submit(step, data)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)
        return handle

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run ``work`` in the background (awaited, at most 5 s, by ``stop``)."""
        task = asyncio.ensure_future(work)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    def poke(self) -> None:
        """Something the interlude may take has arrived: wake ``waiting``."""
        if self._waiter is not None:
            _wake(self._waiter)

    # -- running ----------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"bisik-worker-{self._name}")
            self._loops = [asyncio.create_task(_every(s, tick)) for s, tick in self._repeats]

    async def stop(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for loop in self._loops:
            loop.cancel()
        self._loops = []
        if self._spawned:
            await asyncio.wait(set(self._spawned), timeout=5)
        if self._task is None:
            return
        # Python 3.11's wait_for can swallow a cancellation that lands as its
        # inner future completes; the flag and the sentinel stop the worker anyway.
        self._stopping = True
        self._queue.put_nowait((Step.STOP, None))
        self._task.cancel()
        await asyncio.wait([self._task], timeout=5)
        self._task = None

    async def _run(self) -> None:
        while not self._stopping:
            step, data = await self._queue.get()
            if step in IN_ORDER:
                self._in_order_due -= 1
            if step is Step.STOP:
                return
            try:
                handler = self._handlers.get(step)
                if handler is not None:
                    await handler(data)
                for hook in self._after:
                    await hook()
            except NotConnected as exc:
                log.info("worker: %s (will retry on reconnect)", exc)
            except Exception:
                log.exception("worker step %s failed", step.value)

    async def waiting(self, call: Awaitable[T]) -> T:
        """Wait for a network call made by a step, running the interlude meanwhile
        (not ahead of a queued ``IN_ORDER`` step)."""
        task = asyncio.ensure_future(call)
        loop = asyncio.get_running_loop()
        try:
            while not task.done():
                if self._interlude is not None and not self._in_order_due:
                    ready, run = self._interlude
                    if ready():
                        try:
                            await run()
                        except NotConnected as exc:
                            log.info("interlude: %s (will retry on reconnect)", exc)
                        except Exception:
                            log.exception("interlude failed")
                        continue
                waiter = self._waiter = loop.create_future()
                task.add_done_callback(functools.partial(_wake, waiter))
                await waiter
            return task.result()
        finally:
            self._waiter = None
            task.cancel()  # only if we were cancelled: it is done otherwise


async def _every(seconds: float, tick: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            tick()
        except Exception:
            log.exception("periodic check failed")


def _wake(waiter: asyncio.Future[None], _done: object = None) -> None:
    if not waiter.done():
        waiter.set_result(None)
