"""Engine.IO for a websocket-only server, without the per-connection weight of engineio's.

Measured with tracemalloc, engineio's ``AsyncSocket`` kept about 19 KB per idle
websocket: an ``asyncio.Queue`` (three deques and an Event, ~3 KB) with a writer
task blocked on it, a reader task per incoming packet wrapped in ``wait_for``
(another task and a timer), a ping task asleep for ``ping_interval``, and an
environ holding a class object built per request plus every header decoded
again. Here an idle socket has no task of its own (the one reading it is the
connection's ASGI task), no timer of its own (one :class:`_Heartbeat` per server
pings them all), and a list of packets to send that a writer task drains only
while there is something in it.

The protocol is engineio's, unchanged: the server pings every ``ping_interval``
and closes a socket whose pong does not arrive within ``ping_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
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

# The heartbeat wakes up at most once per slot of this many seconds, for every
# socket whose ping or pong deadline falls in it: a ping or a timeout comes up to
# this much late, never early.
_TICK_S = 0.05


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
        self._asgi_send: Any = None  # the websocket's, once accepted
        self._outbox: list[packet.Packet] = []
        self._writer: asyncio.Task[None] | None = None

    # Sending: a packet goes out at once while the websocket takes it; otherwise packets
    # wait in ``_outbox``, and a writer task exists only while it is not empty, so a
    # slow client never holds up whoever emits to it.

    async def send(self, pkt: packet.Packet) -> None:
        if not await self.check_ping_timeout():
            return
        self._enqueue(pkt)

    def _enqueue(self, pkt: packet.Packet) -> None:
        if self._writer is None and not self._outbox and pkt.packet_type != packet.CLOSE:
            # Nothing waiting ahead of it: written now if the websocket can take
            # it without waiting (bisik's uvicorn protocol, ``send_now``).
            send_now = getattr(getattr(self._asgi_send, "__self__", None), "send_now", None)
            if send_now is not None and send_now(pkt.encode()):
                return
        self._outbox.append(pkt)
        if self._asgi_send is not None and self._writer is None:
            self._writer = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        send = self._asgi_send
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                for pkt in batch:
                    data = pkt.encode()
                    if isinstance(data, bytes):
                        await send({"type": "websocket.send", "bytes": data, "text": None})
                    else:
                        await send({"type": "websocket.send", "bytes": None, "text": data})
                    if pkt.packet_type == packet.CLOSE:
                        # Server-side close: end the transport now rather than wait for the client.
                        self._outbox = []
                        await self._close_websocket()
                        return
        except Exception:  # the connection is gone; the reader sees it too
            self._outbox = []
            await self._close_websocket()
        finally:
            self._writer = None

    async def _close_websocket(self) -> None:
        with contextlib.suppress(Exception):  # already closed
            await self._asgi_send({"type": "websocket.close"})

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        if self.closed or self.closing:
            return
        self.closing = True
        self.server._heartbeat.forget(self)
        await self.server._trigger_event(
            "disconnect", self.sid, reason or self.server.reason.SERVER_DISCONNECT, run_async=False
        )
        if not abort:
            self._enqueue(packet.Packet(packet.CLOSE))
        self.closed = True
        writer = self._writer
        if wait and writer is not None:
            await asyncio.shield(writer)

    # Heartbeat: the server's _Heartbeat calls _send_ping when the next ping is due,
    # then _pong_overdue if no pong came within the timeout.

    def schedule_ping(self) -> None:
        # Called at connect and on every pong (as engineio's): the next ping after the interval.
        if self.last_ping:
            self.last_ping = None
            self.server._heartbeat.ping_later(self)

    def _send_ping(self) -> bool:
        """Returns: whether a ping went out (and a pong is now awaited)."""
        if self.closing or self.closed:
            return False
        self.last_ping = time.time()
        self._enqueue(packet.Packet(packet.PING))
        return True

    def _pong_overdue(self) -> None:
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
        if self._asgi_send is not None:
            await self._close_websocket()

    # Receiving: the connection's ASGI task reads the websocket itself.

    async def handle_get_request(self, environ: dict[str, Any]) -> Any:
        """The websocket's whole life: accept it, then read packets until it ends.

        engineio's goes through ``_upgrade_websocket``, its ASGI ``WebSocket``
        wrapper (``__call__`` and ``wait``) and ``_websocket_handler``: an object
        and four more coroutine frames that every idle connection held suspended.
        """
        connections = [s.strip() for s in environ.get("HTTP_CONNECTION", "").lower().split(",")]
        if "upgrade" not in connections or environ.get("HTTP_UPGRADE", "").lower() != "websocket":
            # Unreachable through handle_request, which checks the upgrade before connecting.
            await self.close(wait=False, abort=True)
            return self.server._bad_request("Invalid websocket upgrade")
        receive = environ["asgi.receive"]
        self._asgi_send = environ["asgi.send"]
        await self._asgi_send({"type": "websocket.accept"})
        self.connected = True
        self.upgraded = True
        if self._outbox and self._writer is None:
            self._writer = asyncio.ensure_future(self._write())
        limit = self.server.max_http_buffer_size
        try:
            while True:
                try:
                    event = await receive()
                except Exception:  # OSError on disconnect; anything else alike
                    break
                if event["type"] != "websocket.receive":
                    break
                data = event.get("bytes")
                if data is None:
                    data = event.get("text")
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
        finally:
            self.server._heartbeat.forget(self)
        writer = self._writer
        if writer is not None:
            await asyncio.gather(writer, return_exceptions=True)
        await self._close_websocket()
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
        return ""


def _take_due(deadlines: dict[LeanSocket, float], now: float) -> list[LeanSocket]:
    """Remove and return the sockets at the front of ``deadlines`` that are due by ``now``."""
    due = []
    for s, deadline in deadlines.items():
        if deadline > now:
            break
        due.append(s)
    for s in due:
        del deadlines[s]
    return due


class _Heartbeat:
    """Every socket's pings on one timer per server, instead of a ``call_later`` per
    socket (a TimerHandle, a bound method and a context: ~0.46 KB each).

    A socket waits in ``_pings`` until its next ping is due, then in ``_pongs``
    until its pong is overdue; in neither once closed. Each maps sockets to
    deadlines on the loop's clock, each deadline that clock plus the same delay:
    insertion order is deadline order, so a tick reads only the due entries at
    the front, and a socket is taken out in O(1).
    """

    __slots__ = ("_interval", "_loop", "_pings", "_pongs", "_timeout", "_timer", "_timer_at")

    def __init__(self, interval: float, timeout: float) -> None:
        self._interval = interval
        self._timeout = timeout
        self._pings: dict[LeanSocket, float] = {}
        self._pongs: dict[LeanSocket, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def ping_later(self, s: LeanSocket) -> None:
        """Ping ``s`` after the interval (at connect, and on each pong)."""
        self.forget(s)  # then in at the end, where its deadline belongs
        loop = asyncio.get_running_loop()
        self._pings[s] = deadline = loop.time() + self._interval
        self._arm(loop, deadline)

    def forget(self, s: LeanSocket) -> None:
        self._pings.pop(s, None)
        self._pongs.pop(s, None)

    def __len__(self) -> int:
        return len(self._pings) + len(self._pongs)

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        at = math.ceil(deadline / _TICK_S) * _TICK_S
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
            if s._send_ping():
                self._pongs[s] = now + self._timeout
        for s in _take_due(self._pongs, now):
            s._pong_overdue()
        fronts = [next(iter(d.values())) for d in (self._pings, self._pongs) if d]
        if fronts:
            self._arm(loop, min(fronts))


class LeanEngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """engineio's AsyncServer with :class:`LeanSocket` sessions; websocket transport only."""

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("transports") != ["websocket"]:
            raise ValueError("LeanEngineServer serves the websocket transport only")
        # No engineio service task: it re-checked every socket's ping timeout
        # (ping_timeout / N apart: 250 wake-ups a second at 5,000 sockets), which
        # the heartbeat does, and dropped closed sockets, which _handle_connect does.
        super().__init__(**{**kwargs, "monitor_clients": False})
        self._heartbeat = _Heartbeat(self.ping_interval, self.ping_timeout)
        # A copy: the driver's dict is shared by every engineio server in the process.
        driver: dict[str, Any] = dict(self._async)  # type: ignore[has-type]
        self._async = dict(driver, translate_request=_translate_request)

    async def _handle_connect(
        self, environ: dict[str, Any], transport: str, jsonp_index: int | None = None
    ) -> Any:
        # engineio's, minus the polling branch and the service task, with LeanSocket.
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
