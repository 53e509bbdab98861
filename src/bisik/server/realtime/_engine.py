"""Engine.IO for a websocket-only server, without the per-connection weight of engineio's.

Measured with tracemalloc, engineio's ``AsyncSocket`` kept about 19 KB per idle
websocket: an ``asyncio.Queue`` (three deques and an Event, ~3 KB) with a writer
task blocked on it, a reader task per incoming packet wrapped in ``wait_for``
(another task and a timer), a ping task asleep for ``ping_interval``, and an
environ holding a class object built per request plus every header decoded
again. Here an idle socket has no task of its own (the one reading it is the
connection's ASGI task), one timer, and a list of packets to send that a writer
task drains only while there is something in it.

The protocol is engineio's, unchanged: the server pings every ``ping_interval``
and closes a socket whose pong does not arrive within ``ping_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import engineio
from engineio import async_socket, exceptions, packet
from engineio.async_drivers import asgi as engineio_asgi

log = logging.getLogger("bisik.server.realtime")

# The request headers engineio itself reads (upgrade checks, CORS). A websocket's
# scope lets go of its headers once these are copied: the scope lives as long as
# the connection, and nothing reads the rest (a browser sends a dozen or more).
_ENVIRON_HEADERS = {
    b"upgrade": "HTTP_UPGRADE",
    b"connection": "HTTP_CONNECTION",
    b"origin": "HTTP_ORIGIN",
    b"host": "HTTP_HOST",
    b"x-forwarded-proto": "HTTP_X_FORWARDED_PROTO",
    b"x-forwarded-host": "HTTP_X_FORWARDED_HOST",
}

# Tasks closing a socket from a timer callback: referenced until they finish.
_closing: set[asyncio.Task[None]] = set()


async def _translate_request(scope: dict[str, Any], receive: Any, send: Any) -> dict[str, Any]:
    """engineio's ASGI environ, slimmed for websocket requests (kept for the socket's life).

    engineio's own builds a class per request for the (never read) body and
    copies every header; python-socketio keeps the environ until disconnect.
    """
    if scope["type"] != "websocket":
        return dict(await engineio_asgi.translate_request(scope, receive, send))
    event = await receive()
    if event["type"] != "websocket.connect":
        return {}
    query = scope.get("query_string") or b""
    try:
        query_string = query.decode()
    except UnicodeDecodeError:
        query_string = ""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": scope["path"],
        "QUERY_STRING": query_string,
        "asgi.receive": receive,
        "asgi.send": send,
        "asgi.scope": scope,
    }
    for name, value in scope["headers"]:
        key = _ENVIRON_HEADERS.get(name.lower())
        if key is None:
            continue
        try:
            text = value.decode()
        except UnicodeDecodeError:
            continue
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    scope["headers"] = []
    environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
    return environ


class LeanSocket(async_socket.AsyncSocket):  # type: ignore[misc]
    """One Engine.IO session on a websocket (the only transport this server offers)."""

    def __init__(self, server: LeanEngineServer, sid: str) -> None:
        # Not BaseSocket.__init__: it would create the queue this class does without.
        self.server = server
        self.sid = sid
        self.last_ping: float | None = time.time()
        self.connected = False
        self.upgrading = False
        self.upgraded = False
        self.closing = False
        self.closed = False
        self.session: dict[str, Any] = {}
        self._ws: Any = None
        self._outbox: list[packet.Packet] = []
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # Sending: packets wait in ``_outbox``; a writer task exists only while it is not empty,
    # so a slow client never holds up whoever emits to it.

    async def send(self, pkt: packet.Packet) -> None:
        if not await self.check_ping_timeout():
            return
        self._enqueue(pkt)

    def _enqueue(self, pkt: packet.Packet) -> None:
        self._outbox.append(pkt)
        if self._ws is not None and self._writer is None:
            self._writer = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        ws = self._ws
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                for pkt in batch:
                    await ws.send(pkt.encode())
                    if pkt.packet_type == packet.CLOSE:
                        # Server-side close: end the transport now rather than wait for the client.
                        self._outbox = []
                        await ws.close()
                        return
        except Exception:  # the connection is gone; the reader sees it too
            self._outbox = []
            await ws.close()
        finally:
            self._writer = None

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        if self.closed or self.closing:
            return
        self.closing = True
        self._cancel_timer()
        await self.server._trigger_event(
            "disconnect", self.sid, reason or self.server.reason.SERVER_DISCONNECT, run_async=False
        )
        if not abort:
            self._enqueue(packet.Packet(packet.CLOSE))
        self.closed = True
        writer = self._writer
        if wait and writer is not None:
            await asyncio.shield(writer)

    # Heartbeat: one timer, either until the next ping or until its pong is overdue.

    def schedule_ping(self) -> None:
        # Called at connect and on every pong (as engineio's): the next ping after the interval.
        if self.last_ping:
            self.last_ping = None
            self._set_timer(self.server.ping_interval, self._send_ping)

    def _send_ping(self) -> None:
        self._timer = None
        if self.closing or self.closed:
            return
        self.last_ping = time.time()
        self._enqueue(packet.Packet(packet.PING))
        self._set_timer(self.server.ping_timeout, self._pong_overdue)

    def _pong_overdue(self) -> None:
        self._timer = None
        if self.last_ping is None or self.closing or self.closed:
            return
        task = asyncio.ensure_future(self._timed_out())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    async def check_ping_timeout(self) -> bool:
        # engineio's, for its service task and for send(); the timer above usually acts first.
        if self.closed:
            raise exceptions.SocketIsClosedError()
        if self.last_ping and time.time() - self.last_ping > self.server.ping_timeout:
            await self._timed_out()
            return False
        return True

    async def _timed_out(self) -> None:
        """No pong in time: drop the transport without a CLOSE packet (as engineio and
        the Node.js server do), so that the client, if it comes back, reconnects."""
        if self.closing or self.closed:
            return
        log.debug("no pong within the ping timeout: closing the socket")
        await self.close(wait=False, abort=True, reason=self.server.reason.PING_TIMEOUT)
        if self._ws is not None:
            await self._ws.close()

    def _set_timer(self, delay: float, callback: Any) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # Receiving: the connection's ASGI task reads the websocket itself.

    async def handle_get_request(self, environ: dict[str, Any]) -> Any:
        connections = [s.strip() for s in environ.get("HTTP_CONNECTION", "").lower().split(",")]
        if "upgrade" in connections and environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            return await self._upgrade_websocket(environ)
        # Unreachable through handle_request, which checks the upgrade before connecting.
        await self.close(wait=False, abort=True)
        return self.server._bad_request("Invalid websocket upgrade")

    async def _websocket_handler(self, ws: Any) -> None:
        self.connected = True
        self.upgraded = True
        self._ws = ws
        if self._outbox and self._writer is None:
            self._writer = asyncio.ensure_future(self._write())
        limit = self.server.max_http_buffer_size
        while True:
            try:
                data = await ws.wait()
            except Exception:  # OSError on disconnect; anything else alike
                break
            if data is None or len(data) > limit:
                break
            try:
                await self.receive(packet.Packet(encoded_packet=data))
            except exceptions.UnknownPacketError:
                pass
            except exceptions.SocketIsClosedError:
                break
            except (ValueError, IndexError, TypeError):
                log.info("closed a websocket that sent an undecodable Engine.IO packet")
                break
            except Exception:
                log.exception("unexpected error in an Engine.IO packet handler")
        self._cancel_timer()
        writer = self._writer
        if writer is not None:
            await asyncio.gather(writer, return_exceptions=True)
        await ws.close()
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)


class LeanEngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """engineio's AsyncServer with :class:`LeanSocket` sessions; websocket transport only."""

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("transports") != ["websocket"]:
            raise ValueError("LeanEngineServer serves the websocket transport only")
        super().__init__(**kwargs)
        # A copy: the driver's dict is shared by every engineio server in the process.
        driver: dict[str, Any] = dict(self._async)  # type: ignore[has-type]
        self._async = dict(driver, translate_request=_translate_request)

    async def _handle_connect(
        self, environ: dict[str, Any], transport: str, jsonp_index: int | None = None
    ) -> Any:
        # engineio's, minus the polling branch, with LeanSocket for AsyncSocket.
        if self.start_service_task:  # type: ignore[has-type]
            self.start_service_task = False
            self.service_task_handle = self.start_background_task(self._service_task)
        sid = self.generate_id()
        s = LeanSocket(self, sid)
        self.sockets[sid] = s
        await s.send(
            packet.Packet(
                packet.OPEN,
                {
                    "sid": sid,
                    "upgrades": [],
                    "pingTimeout": int(self.ping_timeout * 1000),
                    "pingInterval": int(self.ping_interval + self.ping_interval_grace_period)
                    * 1000,
                    "maxPayload": self.max_http_buffer_size,
                },
            )
        )
        ret = await self._trigger_event("connect", sid, environ, run_async=False)
        if ret is not None and ret is not True:
            del self.sockets[sid]
            self.logger.warning("Application rejected connection")
            return self._unauthorized(ret or None)
        s.schedule_ping()
        try:
            return await s.handle_get_request(environ)
        finally:
            if s.closed and sid in self.sockets:
                del self.sockets[sid]
