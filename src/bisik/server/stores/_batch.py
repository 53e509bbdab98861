"""Group commit: requests that arrive while a batch is being written go
together into the next one, so a burst costs one transaction (one fsync)
instead of one each, and a lone request waits for nobody."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")


class Batcher(Generic[Req, Res]):
    """``run`` answers a batch with one result per request, in order; an
    exception in its place fails that request alone, one raised fails them all.

    The batcher owns the task that drains it: :meth:`close` waits for it, so
    that no write is still running when the database closes.
    """

    def __init__(
        self, run: Callable[[list[Req]], Awaitable[Sequence[Res | Exception]]], limit: int = 500
    ) -> None:
        self._run = run
        self._limit = limit
        self._pending: list[tuple[Req, asyncio.Future[Res]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, request: Req) -> Res:
        future: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._limit], self._pending[self._limit :]
            try:
                results = await self._run([request for request, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def close(self) -> None:
        """Wait for the requests already submitted to be written (the server stops)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
        self._task = None
