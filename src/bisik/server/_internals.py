"""Everything of the server that reaches into python-socketio, engineio, uvicorn or websockets.

No other server module imports a private name of these libraries: they import
what they need from here. The versions this was written against are pinned in
``pyproject.toml`` (upper bounds) and ``requirements.lock`` (exact, hashed), and
``tests/unit/server/test_library_internals.py`` fails, naming the library and
what changed, when an upgrade removes or reshapes one of the names below. The
figures behind each item are in ``docs/benchmarks.md`` ("Idle memory", "Group
fan-out", issue 10).

Private names relied on, and what each buys:

engineio (``LeanEngineServer``, ``LeanSocket``: idle connections keep no task,
queue or timer of their own; a fraction of engineio's memory per socket):
  - ``async_socket.AsyncSocket`` subclassed without calling
    ``base_socket.BaseSocket.__init__`` (which creates the queue we do without);
    ``LeanSocket`` sets the instance attributes that ``__init__`` sets and that
    engineio reads (``server``, ``sid``, ``last_ping``, ``connected``,
    ``upgrading``, ``upgraded``, ``closing``, ``closed``, ``session``), and keeps
    ``AsyncSocket.receive``, which calls ``schedule_ping``, ``send``, ``close``
    and the server's ``_trigger_event``.
  - ``AsyncServer._handle_connect(environ, transport, jsonp_index)`` overridden
    (engineio's, with ``LeanSocket`` and without the service task or polling);
    it calls ``generate_id``, ``_trigger_event`` and ``_unauthorized``;
    ``handle_get_request`` calls ``_bad_request``. It also asks the server's
    :class:`TransportGate` (the per-IP socket cap) before anything is kept for a
    websocket, refusing one over the cap with an ASGI ``websocket.http.response``
    (HTTP 429 and a JSON body) when the server offers that extension, and closes a
    socket not authenticated within the gate's ``auth_timeout_s``.
  - ``AsyncServer._async["translate_request"]`` replaced (a websocket's environ
    without a class per request or a copy of every header), falling back to
    ``async_drivers.asgi.translate_request`` for anything else.

python-socketio (``SocketServer``: malformed packets cannot crash the message
handler; ``RecoveringRedisManager``: pushes survive a Redis restart):
  - ``AsyncServer._engineio_server_class()`` (returns ``LeanEngineServer``),
    ``_handle_eio_message(eio_sid, data)`` and
    ``_handle_event(eio_sid, namespace, id, data)`` overridden;
    ``_send_packet(eio_sid, pkt)`` called to answer a malformed acked event.
  - ``AsyncServer.eio`` (its engineio server): ``emit_copies`` writes one
    encoded frame per copy of a fan-out there, past the manager, on a lone
    process (the manager would build and encode a packet per copy);
    ``authenticated`` finds a socket's ``LeanSocket`` in its ``sockets`` through
    the manager's ``eio_sid_from_sid``.
  - ``AsyncRedisManager._redis_connect``, ``_publish`` and
    ``_redis_listen_with_retries`` overridden, its ``redis``, ``pubsub``,
    ``channel``, ``json`` and ``connected`` attributes used, and
    ``AsyncPubSubManager.thread`` (the listener task) cancelled on close.

uvicorn and websockets (``LeanWebSocketProtocol``: a lighter connection, and
a frame written at once without a task):
  - ``uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol``
    subclassed with ``__slots__`` named after its instance attributes; its
    ``queue`` and ``writable`` replaced by :class:`~bisik.server._waiters.Inbox`
    and :class:`~bisik.server._waiters.Flag`; ``request`` and ``response``
    dropped after the handshake; ``send_now`` reads ``handshake_complete``,
    ``initial_response``, ``disconnected``, ``close_sent``, ``transport`` and
    ``conn`` (websockets' sans-I/O ``ServerProtocol``: ``send_text``,
    ``send_binary``, ``data_to_send``, raising ``exceptions.InvalidState``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

import engineio
import socketio
from engineio import async_socket, packet
from engineio import exceptions as engineio_exceptions
from engineio.async_drivers import asgi as engineio_asgi
from socketio import packet as socketio_packet
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

from bisik.proto import ErrorCode, ProtocolError
from bisik.server._heartbeat import Heartbeat
from bisik.server._limits import client_ip
from bisik.server._waiters import Flag, Inbox

log = logging.getLogger("bisik.server.realtime")

__all__ = [
    "LeanEngineServer",
    "LeanWebSocketProtocol",
    "RecoveringRedisManager",
    "SocketServer",
    "TransportGate",
    "translate_request",
]

# -- engineio: a websocket-only Engine.IO server ---------------------------------------

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


async def translate_request(scope: dict[str, Any], receive: Any, send: Any) -> dict[str, Any]:
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
    """One Engine.IO session on a websocket (the only transport this server offers).

    An idle socket has no task of its own (the one reading it is the
    connection's ASGI task), no timer of its own (the server's
    :class:`~bisik.server._heartbeat.Heartbeat` pings them all), and a
    list of packets to send that a writer task drains only while there is
    something in it. The protocol is engineio's, unchanged: the server pings
    every ``ping_interval`` and closes a socket whose pong does not arrive
    within ``ping_timeout``.
    """

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
        # Until the application says the socket authenticated: closes it when due.
        self._auth_deadline: asyncio.TimerHandle | None = None

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
            # it without waiting (LeanWebSocketProtocol.send_now).
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
        self.server.heartbeat.forget(self)
        self._drop_auth_deadline()
        await self.server._trigger_event(
            "disconnect", self.sid, reason or self.server.reason.SERVER_DISCONNECT, run_async=False
        )
        if not abort:
            self._enqueue(packet.Packet(packet.CLOSE))
        self.closed = True
        writer = self._writer
        if wait and writer is not None:
            await asyncio.shield(writer)

    # Authentication: a socket that has not authenticated when its time is up is closed.

    def authenticate_within(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._auth_deadline = loop.call_later(seconds, self._auth_overdue)

    def authenticated(self) -> None:
        """The application admitted the socket: it is not closed for want of it."""
        self._drop_auth_deadline()

    def _drop_auth_deadline(self) -> None:
        if self._auth_deadline is not None:
            self._auth_deadline.cancel()
            self._auth_deadline = None

    def _auth_overdue(self) -> None:
        self._auth_deadline = None
        if not (self.closing or self.closed):
            log.debug("not authenticated in time: closing the socket")
            self.server.run_owned(self.close(wait=False))

    # Heartbeat: the server's Heartbeat calls heartbeat_ping when the next ping is
    # due, then heartbeat_overdue if no pong came within the timeout.

    def schedule_ping(self) -> None:
        # Called at connect and on every pong (as engineio's): the next ping after the interval.
        if self.last_ping:
            self.last_ping = None
            self.server.heartbeat.ping_later(self)

    def heartbeat_ping(self) -> bool:
        if self.closing or self.closed:
            return False
        self.last_ping = time.time()
        self._enqueue(packet.Packet(packet.PING))
        return True

    def heartbeat_overdue(self) -> None:
        if self.last_ping is None or self.closing or self.closed:
            return
        self.server.run_owned(self._timed_out())

    async def check_ping_timeout(self) -> bool:
        # engineio's, for send(); the heartbeat usually acts first.
        if self.closed:
            raise engineio_exceptions.SocketIsClosedError()
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
        wrapper and ``_websocket_handler``: an object and four more coroutine
        frames that every idle connection held suspended.
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
                except engineio_exceptions.UnknownPacketError:
                    pass
                except engineio_exceptions.SocketIsClosedError:
                    break
                except (ValueError, IndexError, TypeError):
                    log.info("closed a websocket that sent an undecodable Engine.IO packet")
                    break
                except Exception:
                    log.exception("unexpected error in an Engine.IO packet handler")
        finally:
            self.server.heartbeat.forget(self)
            self._drop_auth_deadline()
        writer = self._writer
        if writer is not None:
            await asyncio.gather(writer, return_exceptions=True)
        await self._close_websocket()
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
        return ""


class TransportGate(Protocol):
    """What :class:`LeanEngineServer` asks of the application about each websocket."""

    # A socket the application has not called authenticated on by then is closed.
    auth_timeout_s: float

    def open_socket(self, ip: str | None) -> None:
        """Count a new websocket of ``ip``. Raises: ``ProtocolError`` to refuse it."""
        ...

    def close_socket(self, ip: str | None) -> None:
        """A websocket that ``open_socket`` admitted has ended."""
        ...


async def _refuse(environ: dict[str, Any], refusal: ProtocolError) -> None:
    """Answer a websocket handshake with ``refusal`` as an HTTP error (status, JSON
    body) if the server can (ASGI's websocket denial response), else a bare 403."""
    send = environ["asgi.send"]
    if "websocket.http.response" not in environ["asgi.scope"].get("extensions", {}):
        await send({"type": "websocket.close"})
        return
    body = json.dumps(refusal.to_body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    start = {"type": "websocket.http.response.start", "status": refusal.http_status}
    await send({**start, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


class LeanEngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """engineio's AsyncServer with :class:`LeanSocket` sessions; websocket transport only.

    It owns its heartbeat timer and the tasks it starts (closing sockets whose
    pong is overdue or that did not authenticate in time): :meth:`shutdown`
    cancels them. With a :attr:`gate`, every websocket is counted (and may be
    refused) before anything is kept for it, whether or not it ever sends a
    Socket.IO CONNECT.
    """

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("transports") != ["websocket"]:
            raise ValueError("LeanEngineServer serves the websocket transport only")
        # No engineio service task: it re-checked every socket's ping timeout
        # (ping_timeout / N apart), which the heartbeat does, and dropped closed
        # sockets, which _handle_connect does.
        super().__init__(**{**kwargs, "monitor_clients": False})
        self.heartbeat = Heartbeat(self.ping_interval, self.ping_timeout)
        self.gate: TransportGate | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # A copy: the driver's dict is shared by every engineio server in the process.
        driver: dict[str, Any] = dict(self._async)  # type: ignore[has-type]
        self._async = dict(driver, translate_request=translate_request)

    def run_owned(self, work: Awaitable[None]) -> None:
        """Run ``work`` as a task this server holds until it ends or the server shuts down."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shutdown(self) -> None:
        self.heartbeat.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await super().shutdown()

    async def _handle_connect(
        self, environ: dict[str, Any], transport: str, jsonp_index: int | None = None
    ) -> Any:
        # engineio's, minus the polling branch and the service task, with LeanSocket,
        # behind the gate.
        gate = self.gate
        ip = client_ip(environ.get("asgi.scope", {}))
        if gate is not None:
            try:
                gate.open_socket(ip)
            except ProtocolError as refusal:
                await _refuse(environ, refusal)
                return ""
        try:
            return await self._run_socket(environ)
        finally:
            if gate is not None:
                gate.close_socket(ip)

    async def _run_socket(self, environ: dict[str, Any]) -> Any:
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
        if self.gate is not None:
            s.authenticate_within(self.gate.auth_timeout_s)
        try:
            return await s.handle_get_request(environ)
        finally:
            if s.closed and sid in self.sockets:
                del self.sockets[sid]


# -- python-socketio: a hardened server, fan-out frames, a recovering Redis manager -----

# An EVENT packet on the default namespace that asks for an ack: "2<ack id>[...".
_ACKED_EVENT = re.compile(r"2(\d{1,15})[\[{]")


class SocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's AsyncServer on :class:`LeanEngineServer`, hardened against
    packets that do not decode.

    The library assumes every packet is valid JSON of a known type and every
    event a ``[name, ...]`` list; anything else raised in its message handler,
    which logged an error and answered nothing. Such a packet is now dropped;
    an event whose ack id can still be read (say its JSON holds an integer
    over engine.io's digit limit) is answered ``bad_request`` so the client
    does not wait out its timeout. The connection carries on.
    """

    def _engineio_server_class(self) -> type[LeanEngineServer]:
        return LeanEngineServer

    def guard_transports(self, gate: TransportGate) -> None:
        """Count every websocket against ``gate`` and close those that do not
        authenticate in time (see :class:`LeanEngineServer`)."""
        self.eio.gate = gate

    def authenticated(self, sid: str, namespace: str = "/") -> None:
        """Socket ``sid`` passed authentication: it is not closed for want of it."""
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        s = self.eio.sockets.get(eio_sid) if eio_sid is not None else None
        if isinstance(s, LeanSocket):
            s.authenticated()

    async def emit_copies(
        self, event: str, common: dict[str, Any], copies: Iterable[tuple[str, int]]
    ) -> None:
        """Emit ``{"id": id, **common}`` as ``event`` to each ``(room, id)`` of ``copies``.

        On a lone process the packet is encoded once and only its id differs
        per copy, written straight to each socket of the room; with a pub/sub
        manager (Redis), each copy is an ordinary emit so that it reaches the
        other processes.
        """
        if type(self.manager) is not socketio.AsyncManager:
            for room, copy_id in copies:
                await self.emit(event, {"id": copy_id, **common}, room=room)
            return
        head = f"2[{json.dumps(event)},{{" + '"id":'
        tail = json.dumps(common, separators=(",", ":"))[1:]
        if tail != "}":
            tail = "," + tail
        participants = self.manager.get_participants
        send = self.eio.send
        for room, copy_id in copies:
            text = f"{head}{copy_id}{tail}]"
            for _sid, eio_sid in list(participants("/", room)):
                await send(eio_sid, text)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, RecursionError, TypeError) as exc:
            # Not JSON, nested past the recursion limit, an unknown packet type, or
            # (TypeError) a binary frame where no binary attachment was announced.
            log.info("dropped a packet that does not decode: %s", type(exc).__name__)
            acked = _ACKED_EVENT.match(data) if isinstance(data, str) else None
            if acked is not None:
                error = {"code": str(ErrorCode.BAD_REQUEST), "message": "packet does not decode"}
                await self._send_packet(
                    eio_sid,
                    self.packet_class(
                        socketio_packet.ACK,
                        namespace="/",
                        data=[{"ok": False, "error": error}],
                        id=int(acked.group(1)),
                    ),
                )

    async def _handle_event(
        self, eio_sid: str, namespace: str | None, id: int | None, data: Any
    ) -> None:
        if not isinstance(data, list) or not data:
            log.info("dropped an event packet without an event name")
            return
        await super()._handle_event(eio_sid, namespace, id, data)


# Seconds between attempts to subscribe again: doubling from the first, capped.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 5.0


class RecoveringRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """``AsyncRedisManager`` that survives a Redis restart and calls ``on_recovered``
    after each lost subscription.

    python-socketio's drops every push published while Redis is away (the
    messages themselves are stored, but a device connected to another process
    never hears of them until it reconnects), leaks a connection each time it
    reconnects, waits up to a minute between attempts to subscribe again, and
    logs all of it at ERROR. This one keeps one Redis client (its pool
    reconnects by itself), retries the subscription within seconds, and once it
    is subscribed again after a loss runs ``on_recovered`` (the app tells its
    sockets to ``resync``: each client pages its queue). :meth:`close` stops
    the listener and closes the connections.

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

    async def close(self) -> None:
        """Stop the listener and close the Redis connections.

        python-socketio has no public hook for this; without it every stopped
        server (a test, a restart in-process) would leak a listener and a socket.
        """
        listener = getattr(self, "thread", None)
        if isinstance(listener, asyncio.Task):
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)
        for conn in (self.pubsub, self.redis):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.aclose()


# -- uvicorn and websockets: a lighter websocket protocol ------------------------------


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol, lighter per open connection.

    Its receive queue and writable event become :class:`~bisik.server._waiters.Inbox`
    and :class:`~bisik.server._waiters.Flag`, and the parsed handshake request
    and the response are let go once the handshake is done (the app keeps what
    it needs: the ASGI scope). The behaviour is uvicorn's.

    The slots hold uvicorn's own instance attributes: it sets more than the 30
    that an instance dict shares keys for, so each connection had a dict of its
    own; slots take 8 bytes each. An attribute uvicorn adds later still lands
    in the instance dict.
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
        self.queue = Inbox()  # type: ignore[assignment]
        writable = Flag()
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
