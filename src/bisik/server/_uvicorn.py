"""How uvicorn serves Bisik: its websocket protocol and options, shared by every way to run it.

``bisik server``, :class:`~bisik.server.EmbeddedServer` and the benchmarks all
pass :func:`uvicorn_options`, so that what is measured is what runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState


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


class _Inbox(_Waiters):
    """What uvicorn's protocol needs of its ``asyncio.Queue``: ``put_nowait``, ``get``, ``empty``.

    An ``asyncio.Queue`` allocates three deques and an Event (four deques of
    about 700 bytes each) for every connection; this holds a list and, only
    while a reader waits, a future. uvicorn pauses reading after each message
    until the app took it, so the list stays a few items long.
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


class _Flag(_Waiters):
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


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol, lighter per open connection.

    Its receive queue and writable event become :class:`_Inbox` and
    :class:`_Flag`, and the parsed handshake request and the response are let
    go once the handshake is done (the app keeps what it needs: the ASGI scope).
    About 9 KB less per connection; the behaviour is uvicorn's.

    The slots hold uvicorn's own instance attributes: it sets more than the 30
    that an instance dict shares keys for, so each connection had a dict of its
    own (~1.6 KB); slots take 8 bytes each. An attribute uvicorn adds later
    still lands in the instance dict.
    """

    __slots__ = (
        *("app", "app_state", "asgi_version", "client", "close_sent", "close_timeout"),
        *("close_timer", "config", "conn", "connections", "curr_msg_data_type"),
        *("default_headers", "disconnected", "frames", "handshake_complete"),
        *("handshake_initiated", "initial_response", "last_ping_rtt"),
        *("logger", "loop", "pending_ping_payload", "ping_interval", "ping_sent_at"),
        *("ping_timeout", "ping_timer", "pong_timer", "queue", "read_paused", "request"),
        *("response", "root_path", "scheme", "scope", "server"),
        *("tasks", "transport", "writable"),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        writable = _Flag()
        writable.set()
        self.writable = writable  # type: ignore[assignment]

    def send_now(self, data: str | bytes) -> bool:
        """Write one data frame at once if nothing could hold it up (the
        transport takes more and the connection is open): ``send`` without a
        task and its coroutines per frame. ``False``: nothing was written, and
        ``send`` must do it (it waits, or raises for a closed connection)."""
        if (
            not self.writable.is_set()
            or not self.handshake_complete
            or self.initial_response is not None
            or self.disconnected
            or self.close_sent
        ):
            return False
        try:
            if isinstance(data, bytes):
                self.conn.send_binary(data)
            else:
                self.conn.send_text(data.encode())
        except InvalidState:
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message.get("type") == "websocket.accept" and self.handshake_complete:
            # Read only before and during the handshake. The websockets parser's
            # suspended generator still holds the request: empty its headers too.
            self.request.headers.clear()
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]


def uvicorn_options(max_message_bytes: int) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` besides the app, host
    and port; ``max_message_bytes`` is the server's limit (``max_body_bytes``)."""
    return {
        "ws": LeanWebSocketProtocol,
        # Engine.IO drops a packet over the limit, in characters; the websocket
        # layer refuses a frame over four times that many bytes (UTF-8) before
        # buffering it, instead of uvicorn's 16 MiB per connection.
        "ws_max_size": 4 * max_message_bytes,
        # Engine.IO's own heartbeat (ping_interval / ping_timeout) detects dead
        # clients; a second one at the websocket layer is only more wake-ups.
        "ws_ping_interval": None,
        "ws_ping_timeout": None,
        # A browser offers permessage-deflate and uvicorn accepted it: a zlib
        # compressor and decompressor per connection (tens of KB each) to
        # squeeze ciphertext, which does not compress.
        "ws_per_message_deflate": False,
        # Access logs would record who fetched whose keys, and when: the server
        # keeps no record it does not need.
        "access_log": False,
        # Longer than any client keeps an idle connection (the SDK: 2 s).
        "timeout_keep_alive": 30,
    }
