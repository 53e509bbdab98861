"""The slim Engine.IO environ of a websocket request."""

from __future__ import annotations

from typing import Any

from bisik.server.realtime._engine import _translate_request


async def test_websocket_environ_keeps_engineios_headers_and_the_scope_lets_go_of_the_rest() -> (
    None
):
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": "/socket.io/",
        "query_string": b"EIO=4&transport=websocket",
        "client": ("203.0.113.7", 50000),
        "headers": [
            (b"host", b"chat.example"),
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"origin", b"https://chat.example"),
            (b"user-agent", b"Mozilla/5.0"),
            (b"cookie", b"a=b"),
        ],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    environ = await _translate_request(scope, receive, None)
    assert environ["HTTP_HOST"] == "chat.example"
    assert environ["HTTP_UPGRADE"] == "websocket"
    assert environ["HTTP_CONNECTION"] == "Upgrade"
    assert environ["HTTP_ORIGIN"] == "https://chat.example"
    assert environ["QUERY_STRING"] == "EIO=4&transport=websocket"
    assert "HTTP_USER_AGENT" not in environ
    assert environ["asgi.scope"] is scope
    assert scope["headers"] == []
    assert scope["client"] == ("203.0.113.7", 50000)
