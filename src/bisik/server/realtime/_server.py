"""python-socketio's AsyncServer, hardened against packets that do not decode."""

from __future__ import annotations

import logging
from typing import Any

import socketio

log = logging.getLogger("bisik.server.realtime")


class SocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """Drops malformed packets instead of letting them crash inside python-socketio.

    The library assumes every packet is valid JSON of a known type and every
    event a ``[name, ...]`` list; anything else raised in its message handler,
    which logged an error and answered nothing. Such a packet is now dropped
    quietly (its ack id, if any, may not even be readable); the connection
    carries on.
    """

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, RecursionError) as exc:
            # Not JSON, nested past the recursion limit, or an unknown packet type.
            log.info("dropped a packet that does not decode: %s", type(exc).__name__)

    async def _handle_event(
        self, eio_sid: str, namespace: str | None, id: int | None, data: Any
    ) -> None:
        if not isinstance(data, list) or not data:
            log.info("dropped an event packet without an event name")
            return
        await super()._handle_event(eio_sid, namespace, id, data)
