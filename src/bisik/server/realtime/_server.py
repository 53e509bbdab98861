"""python-socketio's AsyncServer, hardened against packets that do not decode."""

from __future__ import annotations

import logging
import re
from typing import Any

import socketio
from socketio import packet

from bisik.proto import ErrorCode
from bisik.server.realtime._engine import LeanEngineServer

log = logging.getLogger("bisik.server.realtime")

# An EVENT packet on the default namespace that asks for an ack: "2<ack id>[...".
_ACKED_EVENT = re.compile(r"2(\d{1,15})[\[{]")


class SocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """Drops malformed packets instead of letting them crash inside python-socketio.

    The library assumes every packet is valid JSON of a known type and every
    event a ``[name, ...]`` list; anything else raised in its message handler,
    which logged an error and answered nothing. Such a packet is now dropped;
    an event whose ack id can still be read (say its JSON holds an integer
    over engine.io's digit limit) is answered ``bad_request`` so the client
    does not wait out its timeout. The connection carries on.

    Its Engine.IO layer is :class:`LeanEngineServer` (websocket transport only),
    which keeps far less per idle connection than engineio's own.
    """

    def _engineio_server_class(self) -> type[LeanEngineServer]:
        return LeanEngineServer

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
                        packet.ACK,
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
