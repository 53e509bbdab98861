"""The lean Engine.IO server: the slim environ of a websocket request, the shared heartbeat."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from bisik.server._heartbeat import TICK_S
from bisik.server._internals import LeanEngineServer, translate_request


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

    environ = await translate_request(scope, receive, None)
    assert environ["HTTP_HOST"] == "chat.example"
    assert environ["HTTP_UPGRADE"] == "websocket"
    assert environ["HTTP_CONNECTION"] == "Upgrade"
    assert environ["HTTP_ORIGIN"] == "https://chat.example"
    assert environ["QUERY_STRING"] == "EIO=4&transport=websocket"
    assert "HTTP_USER_AGENT" not in environ
    assert environ["asgi.scope"] is scope
    assert scope["headers"] == []
    assert scope["client"] == ("203.0.113.7", 50000)


# -- the shared heartbeat, through engineio's own request entry point ---------------


class _Client:
    """One websocket as the ASGI server hands it to the app, and a client at its other end.

    ``answers``: whether it replies to each ping with a pong.
    """

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.incoming.put_nowait({"type": "websocket.connect"})
        self.sent: list[str] = []
        self.pings: list[float] = []  # loop time of each ping received
        self.closed_at: float | None = None

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send":
            self.sent.append(message["text"])
            if message["text"] == "2":
                self.pings.append(asyncio.get_running_loop().time())
                if self.answers:
                    self.incoming.put_nowait({"type": "websocket.receive", "text": "3"})
        elif message["type"] == "websocket.close" and self.closed_at is None:
            self.closed_at = asyncio.get_running_loop().time()
            self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})

    def scope(self) -> dict[str, Any]:
        return {
            "type": "websocket",
            "path": "/engine.io/",
            "query_string": b"EIO=4&transport=websocket",
            "headers": [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")],
        }


def _server(interval: float, timeout: float) -> tuple[LeanEngineServer, list[str]]:
    server = LeanEngineServer(
        async_mode="asgi",
        transports=["websocket"],
        ping_interval=interval,
        ping_timeout=timeout,
        cors_allowed_origins=[],
    )
    # No engineio service task (LeanEngineServer never starts one): the heartbeat alone
    # pings and drops silent sockets.
    assert server.start_service_task is False
    reasons: list[str] = []

    @server.on("connect")
    async def connect(sid: str, environ: dict[str, Any]) -> bool:
        return True

    @server.on("disconnect")
    async def disconnect(sid: str, reason: str) -> None:
        reasons.append(reason)

    return server, reasons


async def test_heartbeat_pings_every_interval_while_pongs_come_back() -> None:
    server, reasons = _server(interval=0.2, timeout=0.3)
    clients = [_Client(answers=True) for _ in range(5)]
    start = asyncio.get_running_loop().time()
    tasks = [
        asyncio.create_task(server.handle_request(c.scope(), c.receive, c.send)) for c in clients
    ]
    await asyncio.sleep(1.3)
    try:
        for c in clients:
            assert c.sent[0].startswith("0{")  # the OPEN packet
            assert c.closed_at is None
            # Pings at about 0.2, 0.4, ... s (up to a heartbeat tick late, never early).
            assert 4 <= len(c.pings) <= 6
            assert c.pings[0] - start >= 0.2
            gaps = [b - a for a, b in itertools.pairwise(c.pings)]
            assert all(0.19 <= gap <= 0.2 + TICK_S + 0.05 for gap in gaps), gaps
        assert reasons == []
        assert len(server.sockets) == 5
    finally:
        for c in clients:
            c.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert reasons == [server.reason.TRANSPORT_CLOSE] * 5
    assert len(server.heartbeat) == 0  # closed sockets leave the heartbeat
    assert server.sockets == {}  # and the server's map, without a service task
    assert server.service_task_handle is None
    await server.shutdown()


async def test_heartbeat_drops_a_socket_whose_pong_is_overdue_and_keeps_the_others() -> None:
    server, reasons = _server(interval=0.2, timeout=0.3)
    silent, talking = _Client(answers=False), _Client(answers=True)
    tasks = [
        asyncio.create_task(server.handle_request(c.scope(), c.receive, c.send))
        for c in (silent, talking)
    ]
    # The silent socket's ping goes out at ~0.2 s; its pong is overdue at ~0.5 s.
    await asyncio.wait_for(tasks[0], 2)
    assert len(silent.pings) == 1
    assert silent.closed_at is not None
    assert 0.29 <= silent.closed_at - silent.pings[0] <= 0.3 + TICK_S + 0.05
    assert "1" not in silent.sent  # dropped without a CLOSE packet: the client reconnects
    assert reasons == [server.reason.PING_TIMEOUT]
    assert talking.closed_at is None
    assert len(server.heartbeat) == 1
    pings = len(talking.pings)
    await asyncio.sleep(0.5)
    assert len(talking.pings) > pings  # the heartbeat goes on for the others
    talking.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(tasks[1], 1)
    assert len(server.heartbeat) == 0
    await server.shutdown()


async def test_shutdown_cancels_the_heartbeat_timer_and_the_tasks_the_server_started() -> None:
    server, _reasons = _server(interval=0.2, timeout=0.3)
    client = _Client(answers=True)
    task = asyncio.create_task(server.handle_request(client.scope(), client.receive, client.send))
    await asyncio.sleep(0.05)
    assert len(server.heartbeat) == 1
    never = asyncio.get_running_loop().create_future()
    server.run_owned(never)
    await server.shutdown()
    assert never.cancelled()
    assert len(server.heartbeat) == 0
    assert server.heartbeat._timer is None  # nothing left to wake the loop
    client.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(task, 1)
