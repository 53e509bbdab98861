"""The Socket.IO packet both sides use: the standard wire format, a cheaper binary check."""

from __future__ import annotations

from typing import Any

from socketio import packet


class SocketPacket(packet.Packet):  # type: ignore[misc]
    """python-socketio's packet, byte for byte on the wire (browsers and other
    Socket.IO clients see no difference).

    Every packet built is first searched for ``bytes`` (binary attachments).
    The library's search builds a list and a ``functools.reduce`` per nested
    list or dict and never stops early: a few percent of the server's event
    loop when frames carry batches of envelopes. This one walks the payload
    once, iteratively, and stops at the first ``bytes``.
    """

    @classmethod
    def data_is_binary(cls, data: Any) -> bool:
        pending = [data]
        while pending:
            item = pending.pop()
            if isinstance(item, (bytes, bytearray)):
                return True
            if isinstance(item, list):
                pending += item
            elif isinstance(item, dict):
                pending += item.values()
        return False
