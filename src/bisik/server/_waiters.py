"""Lean stand-ins for the ``asyncio.Queue`` and ``asyncio.Event`` that uvicorn's
websocket protocol keeps per connection (no library code here)."""

from __future__ import annotations

import asyncio
from typing import Any


class _Waiters:
    """Futures parked until woken, in the order they started waiting; no list
    at all while nobody waits.

    A waiter awaits ``_waiter()`` itself and calls ``_discard`` after: a coroutine
    doing both would be one more suspended frame for every idle connection.
    """

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] | None = None

    def _waiter(self) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        return waiter

    def _discard(self, waiter: asyncio.Future[None]) -> None:
        if self._waiters is not None and waiter in self._waiters:
            self._waiters.remove(waiter)
            if not self._waiters:
                self._waiters = None

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)


class Inbox(_Waiters):
    """What uvicorn's protocol needs of its ``asyncio.Queue``: ``put_nowait``, ``get``, ``empty``.

    An ``asyncio.Queue`` allocates three deques and an Event for every
    connection; this holds a list and, only while a reader waits, a future.
    uvicorn pauses reading after each message until the app took it, so the
    list stays a few items long.
    """

    __slots__ = ("_items",)

    def __init__(self) -> None:
        super().__init__()
        self._items: list[Any] = []

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._wake()

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    async def get(self) -> Any:
        while not self._items:
            waiter = self._waiter()
            try:
                await waiter
            finally:
                self._discard(waiter)
        item = self._items.pop(0)
        if self._items:
            self._wake()  # another reader may be waiting for what is left
        return item


class Flag(_Waiters):
    """What uvicorn's protocol needs of its ``asyncio.Event`` (``writable``), without its deque.

    Waiters are woken in the order they started waiting, as by ``asyncio.Event``,
    so sends held up by a full transport buffer keep their order.
    """

    __slots__ = ("_is_set",)

    def __init__(self) -> None:
        super().__init__()
        self._is_set = False

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        self._is_set = True
        self._wake()

    def clear(self) -> None:
        self._is_set = False

    async def wait(self) -> bool:
        if not self._is_set:
            waiter = self._waiter()
            try:
                await waiter
            finally:
                self._discard(waiter)
        return True
