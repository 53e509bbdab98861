"""Our Socket.IO packet: the library's wire format, its own binary check."""

from __future__ import annotations

from typing import Any

import pytest
from socketio import packet

from bisik.proto import SocketPacket

PAYLOADS: list[Any] = [
    None,
    ["ack", {"ids": [1, 2, 3]}],
    ["send_many", {"messages": [{"envelopes": [{"body": "x" * 50, "type": 1}]}] * 3}],
    [{"ok": True, "results": [{"ok": False, "error": {"code": "not_sent"}}]}],
    ["deep", {"a": [[[{"b": [None, 1.5, True, "é"]}]]]}],
    ["upload", {"chunk": b"\x00\x01", "meta": {"n": 1}}],
    ["nested", [{"x": [1, {"y": bytearray(b"z")}]}]],
]


@pytest.mark.parametrize("data", PAYLOADS)
@pytest.mark.parametrize("kind", [packet.EVENT, packet.ACK])
def test_same_packets_on_the_wire_as_the_library(data: Any, kind: int) -> None:
    ours = SocketPacket(kind, data=data, namespace="/", id=7)
    theirs = packet.Packet(kind, data=data, namespace="/", id=7)
    assert ours.packet_type == theirs.packet_type  # binary payloads become BINARY_*
    assert ours.encode() == theirs.encode()


def test_binary_found_anywhere_and_only_when_there() -> None:
    assert SocketPacket.data_is_binary([{"a": [1, {"b": b"x"}]}, "tail"])
    assert SocketPacket.data_is_binary(bytearray(b"x"))
    assert not SocketPacket.data_is_binary([{"a": [1, {"b": "x"}]}, "tail", None, 2.0])
    assert not SocketPacket.data_is_binary({})
