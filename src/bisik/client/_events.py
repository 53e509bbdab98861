"""The client's event bus: what services tell the application."""

from __future__ import annotations

import asyncio
import contextlib

from bisik.client._models import Event


class EventBus:
    """Fans each event out to every subscribed queue, in the order emitted."""

    def __init__(self) -> None:
        self._subscribers: list[asyncio.Queue[Event]] = []

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(queue)

    def emit(self, event: Event) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event)

    def emit_all(self, events: list[Event]) -> None:
        for event in events:
            self.emit(event)
