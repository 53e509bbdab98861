"""Fan-out across server processes through Redis, surviving a Redis restart.

python-socketio's ``AsyncRedisManager`` drops every push published while Redis
is away (the messages themselves are stored, but a device connected to another
process never hears of them until it reconnects), leaks a connection each time
it reconnects, waits up to a minute between attempts to subscribe again, and
logs all of it at ERROR. This subclass keeps one Redis client (its pool
reconnects by itself), retries the subscription within seconds, and once it is
subscribed again after a loss tells its own sockets to ``resync``: each client
then pages its queue, so what it missed arrives in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import socketio

log = logging.getLogger("bisik.server.realtime")

# Seconds between attempts to subscribe again: doubling from the first, capped.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 5.0


class RecoveringRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """``AsyncRedisManager`` that calls ``on_recovered`` after each lost subscription.

    Args:
        url: the Redis URL.
        on_recovered: run once this process is subscribed again after losing Redis.
    """

    def __init__(self, url: str, on_recovered: Callable[[], Awaitable[None]]) -> None:
        super().__init__(url)
        self._on_recovered = on_recovered
        self._closing: set[asyncio.Task[None]] = set()

    def _redis_connect(self) -> None:
        # Upstream makes a new client (and pubsub) on every error, leaking the
        # old ones and pulling the pubsub from under the listener. The client's
        # pool reconnects by itself, so one client serves for the whole run.
        if self.redis is None:
            super()._redis_connect()
        self.connected = True

    def _new_pubsub(self) -> None:
        old: Any = getattr(self, "pubsub", None)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _publish(self, data: Any) -> Any:
        self._redis_connect()
        try:
            return await self.redis.publish(self.channel, self.json.dumps(data))
        except Exception as exc:  # redis-py raises its own errors and OSError
            # The subscribers lost Redis too; they resync once it is back.
            log.warning("push to other server processes lost: %s", type(exc).__name__)
            return None

    async def _redis_listen_with_retries(self) -> AsyncIterator[Any]:
        self._redis_connect()
        retry = RETRY_FIRST_S
        lost = False
        while True:
            try:
                self._new_pubsub()
                await self.pubsub.subscribe(self.channel)
                if lost:
                    log.info("subscribed to Redis again; sockets here resync")
                    lost = False
                    retry = RETRY_FIRST_S
                    await self._on_recovered()
                async for message in self.pubsub.listen():
                    yield message
            except Exception as exc:  # redis-py raises its own errors and OSError
                if not lost:
                    log.warning("lost Redis (%s); retrying", type(exc).__name__)
                lost = True
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_MAX_S)
