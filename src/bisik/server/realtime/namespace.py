"""The one Socket.IO namespace, dispatching each event to its concern's handler.

One namespace (one connection per device) keeps the per-connection cost low;
the concerns stay in their own modules and register their events here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import socketio
from sqlalchemy.exc import OperationalError

from bisik.proto import Envelope, ErrorCode, GroupChange, PresenceInfo, ProtocolError
from bisik.server._internals import SocketServer
from bisik.server._limits import STORAGE_UNAVAILABLE, Limits, client_ip, storage_problem
from bisik.server._services import Services
from bisik.server.realtime._base import Connection, EventHandler
from bisik.server.realtime.auth import AuthConcern
from bisik.server.realtime.crypto import CryptoConcern
from bisik.server.realtime.devices import DevicesConcern, user_room
from bisik.server.realtime.groups import GroupsConcern
from bisik.server.realtime.message import MessageConcern, messages_in
from bisik.server.realtime.presence import PresenceConcern
from bisik.server.stores import DeviceHandle

log = logging.getLogger("bisik.server.realtime")

# How stale a socket's "device not revoked" check may get (see _still_valid).
REVALIDATE_S = 5.0

# Events that count against a device's message rate (Limits.message).
MESSAGE_EVENTS = frozenset({"send", "group_send", "send_many"})


def device_room(device_pk: int) -> str:
    return f"device:{device_pk}"


def account_room(username: str) -> str:
    """Only the user's own devices: for what concerns the user alone (presence)."""
    return f"account:{username}"


class SocketNotifier:
    """Pushes to a device's room; with the Redis manager this reaches every process."""

    def __init__(self) -> None:
        self.sio: SocketServer | None = None

    async def deliver(self, device_pk: int, envelope: Envelope) -> None:
        if self.sio is not None:
            await self.sio.emit("envelope", envelope.model_dump(), room=device_room(device_pk))

    async def deliver_many(self, device_pk: int, envelopes: list[Envelope]) -> None:
        if len(envelopes) == 1:
            await self.deliver(device_pk, envelopes[0])
        elif envelopes and self.sio is not None:
            data = {"envelopes": [e.model_dump() for e in envelopes]}
            await self.sio.emit("envelopes", data, room=device_room(device_pk))

    async def deliver_copies(self, copies: list[tuple[int, int]], envelope: Envelope) -> None:
        if self.sio is None:
            return
        common = envelope.model_dump(exclude={"id"})
        # On one process the packet is encoded once, only its id differs per copy
        # (a 500-member group's fan-out would build 499 models and packets).
        await self.sio.emit_copies(
            "envelope", common, ((device_room(pk), envelope_id) for pk, envelope_id in copies)
        )

    async def keys_low(self, device_pk: int, count: int) -> None:
        if self.sio is not None:
            await self.sio.emit("keys_low", {"count": count}, room=device_room(device_pk))

    async def devices_changed(self, username: str) -> None:
        if self.sio is not None:
            await self.sio.emit("devices_changed", {"username": username}, room=user_room(username))

    async def presence(self, username: str, info: PresenceInfo) -> None:
        if self.sio is not None:
            await self.sio.emit("presence", info.model_dump(), room=account_room(username))

    async def group_changed(self, usernames: Iterable[str], change: GroupChange) -> None:
        if self.sio is not None:
            data = change.model_dump()
            for username in usernames:
                await self.sio.emit("group_changed", data, room=account_room(username))

    async def device_removed(self, device_pk: int) -> None:
        if self.sio is None:
            return
        room = device_room(device_pk)
        await self.sio.emit("device_removed", {}, room=room)
        # Connections on this process are closed now; sockets on other server
        # processes are refused at their next event (BisikNamespace._still_valid).
        for sid, _eio_sid in list(self.sio.manager.get_participants("/", room)):
            await self.sio.disconnect(sid)


class _Socket:
    """What the namespace keeps per authenticated socket: the device's handle
    (not its keys), the client's address for the rate limits, when the
    device was last found not revoked, and the rooms it entered by
    ``devices_watch`` (``None`` until it watches anyone)."""

    __slots__ = ("device", "ip", "validated_at", "watched")

    def __init__(self, device: DeviceHandle, ip: str | None, validated_at: float) -> None:
        self.device = device
        self.ip = ip
        self.validated_at = validated_at
        self.watched: set[str] | None = None


def _error(code: ErrorCode | str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": str(code), "message": message}}


class BisikNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(self, services: Services) -> None:
        super().__init__("/")
        self._auth = AuthConcern(services)
        self.presence = PresenceConcern(services)
        self._handlers: dict[str, EventHandler] = {}
        self.limits = Limits(services.config)
        concerns = (
            MessageConcern(services),
            CryptoConcern(services),
            DevicesConcern(services, self.enter_room, self._watched_by, self.limits.max_watched),
            GroupsConcern(services),
            self.presence,
        )
        for concern in concerns:
            self._handlers.update(concern.events())
        self._sockets: dict[str, _Socket] = {}

    async def trigger_event(self, event: Any, *args: Any) -> Any:
        sid = args[0]
        # python-socketio also hands a client's *event* named "connect" or
        # "disconnect" to this method. The real ones arrive while the socket is
        # still connecting or already disconnecting, never while fully connected.
        if event in ("connect", "disconnect") and not self.server.manager.is_connected(
            sid, self.namespace
        ):
            if event == "connect":
                sid, environ, auth = (*args, None)[:3]
                return await self._connect(sid, auth, environ)
            return await self._disconnect(sid)
        data = args[1] if len(args) > 1 else None
        sock = self._sockets.get(sid)
        if sock is None:
            return _error(ErrorCode.UNAUTHORIZED, "not authenticated")
        if not await self._still_valid(sid, sock):
            return _error(ErrorCode.UNAUTHORIZED, "this device was removed from its account")
        if not isinstance(event, str):
            return _error(ErrorCode.BAD_REQUEST, "an event name must be a string")
        handler = self._handlers.get(event)
        if handler is None:
            return _error(ErrorCode.UNKNOWN_EVENT, f"unknown event {event[:64]!r}")
        if len(args) > 2:
            return _error(ErrorCode.BAD_REQUEST, "an event takes exactly one payload")
        try:
            if event in MESSAGE_EVENTS:
                self.limits.message(sock.device.pk, sock.ip, messages_in(event, data))
            elif event == "devices_watch":
                self.limits.devices_watch(sock.device.pk, sock.ip)
            result = await handler(Connection(sid, sock.device), data)
        except ProtocolError as exc:
            return _error(exc.code, exc.message)
        except OperationalError as exc:
            # Disk full, database locked or unreachable: not a bug, and it passes.
            log.warning("storage unavailable in event %s: %s", event, storage_problem(exc))
            return _error(ErrorCode.UNAVAILABLE, STORAGE_UNAVAILABLE)
        except Exception:
            log.exception("unhandled error in event %s", event)
            return _error(ErrorCode.INTERNAL, "internal server error")
        return {"ok": True, **result}

    async def _still_valid(self, sid: str, sock: _Socket) -> bool:
        """Re-check now and then that the device was not revoked meanwhile.

        The revoking process closes its own sockets at once; this closes the
        ones on other server processes within ``REVALIDATE_S``.
        """
        now = time.monotonic()
        if now - sock.validated_at < REVALIDATE_S:
            return True
        if not await self._auth.services.auth.device_live(sock.device.pk):
            # Forgotten before the disconnect, so that no presence is recorded
            # for a removed device. (Its transport's slot in the per-address
            # count is freed when the transport ends.)
            self._sockets.pop(sid, None)
            await self.disconnect(sid)
            return False
        sock.validated_at = now
        return True

    def _watched_by(self, sid: str) -> set[str] | None:
        sock = self._sockets.get(sid)
        if sock is None:
            return None
        if sock.watched is None:
            sock.watched = set()
        return sock.watched

    async def _connect(self, sid: str, auth: Any, environ: Any) -> None:
        # The per-address cap was applied to the transport, before this
        # (LeanEngineServer's gate): a socket that never gets here counts too.
        scope = environ.get("asgi.scope", {}) if isinstance(environ, dict) else {}
        ip = client_ip(scope)
        row = await self._auth.authenticate(auth)
        # The handle only: the device's keys and signatures are not kept per socket.
        device = DeviceHandle(row.pk, row.username, row.device_id)
        self._sockets[sid] = _Socket(device, ip, time.monotonic())
        self.server.authenticated(sid, self.namespace)
        await self.enter_room(sid, device_room(device.pk))
        await self.enter_room(sid, user_room(device.username))
        await self.enter_room(sid, account_room(device.username))
        try:
            await self.presence.on_connected(sid, device)
        except OperationalError as exc:
            # Presence is best-effort: a full or locked database must not refuse the socket.
            log.warning("presence not recorded at connect: %s", storage_problem(exc))
        # No keys_low here: a packet sent before the connect handler returns
        # reaches the client before its namespace is open. Clients ask for
        # their key count after every (re)connect instead.

    async def _disconnect(self, sid: str) -> None:
        sock = self._sockets.pop(sid, None)
        if sock is not None:
            try:
                await self.presence.on_disconnected(sid, sock.device)
            except OperationalError as exc:
                log.warning("presence not recorded at disconnect: %s", storage_problem(exc))
