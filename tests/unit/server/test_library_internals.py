"""The private names of python-socketio, engineio, uvicorn and websockets that
``bisik.server._internals`` relies on are still there, with the shape it uses.

An upgrade that removes or reshapes one fails here, with a message naming the
library, the version installed and the one pinned in ``requirements.lock``, and
what changed, instead of failing as lost deliveries in the integration tests.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import engineio
import pytest
import socketio
from engineio import async_socket, base_socket
from engineio.async_drivers import asgi as engineio_asgi
from socketio import async_pubsub_manager
from uvicorn import Config
from uvicorn.server import ServerState

from bisik.server import _internals
from bisik.server._waiters import Flag, Inbox

LOCK = Path(__file__).parents[3] / "requirements.lock"


def _pinned(distribution: str) -> str:
    match = re.search(
        rf"^{re.escape(distribution)}==([^\s\\]+)", LOCK.read_text(), re.MULTILINE | re.IGNORECASE
    )
    return match.group(1) if match else "(not in requirements.lock)"


def _require(distribution: str, ok: bool, what: str) -> None:
    """Fail naming the library, its versions and ``what`` changed, unless ``ok``."""
    if not ok:
        pytest.fail(
            f"{distribution} {metadata.version(distribution)} is installed, "
            f"bisik.server._internals was written against {_pinned(distribution)} "
            f"(requirements.lock): {what}. Adapt _internals (see its docstring) or pin back.",
            pytrace=False,
        )


def _params(func: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(func).parameters)


def _calls(func: Callable[..., Any], *names: str) -> bool:
    """Whether ``func``'s code refers to each of ``names`` (attribute or global)."""
    code = inspect.unwrap(func).__code__
    return set(names) <= set(code.co_names)


def test_the_pins_match_what_is_installed() -> None:
    for distribution in ("python-socketio", "python-engineio", "uvicorn", "websockets"):
        _require(
            distribution,
            metadata.version(distribution) == _pinned(distribution),
            "the installed version is not the pinned one",
        )


# -- engineio ------------------------------------------------------------------------


class _FakeServer:
    def create_queue(self) -> object:
        return object()


def test_engineio_socket_init_sets_only_what_lean_socket_sets() -> None:
    _require(
        "python-engineio",
        issubclass(async_socket.AsyncSocket, base_socket.BaseSocket),
        "engineio.async_socket.AsyncSocket no longer derives from base_socket.BaseSocket",
    )
    theirs = set(vars(base_socket.BaseSocket(_FakeServer(), "sid")))
    lean = _internals.LeanSocket.__new__(_internals.LeanSocket)
    _internals.LeanSocket.__init__(lean, _FakeServer(), "sid")  # type: ignore[arg-type]
    missing = theirs - {"queue"} - set(vars(lean))
    _require(
        "python-engineio",
        not missing,
        f"BaseSocket.__init__ now sets {sorted(missing)}, which LeanSocket (skipping it) does not",
    )


def test_engineio_socket_methods_lean_socket_overrides_or_keeps() -> None:
    expected = {
        "receive": ["self", "pkt"],
        "send": ["self", "pkt"],
        "check_ping_timeout": ["self"],
        "close": ["self", "wait", "abort", "reason"],
        "schedule_ping": ["self"],
        "handle_get_request": ["self", "environ"],
    }
    for name, params in expected.items():
        method = getattr(async_socket.AsyncSocket, name, None)
        _require(
            "python-engineio",
            method is not None and _params(method) == params,
            f"AsyncSocket.{name} is {'gone' if method is None else _params(method)}, "
            f"expected parameters {params}",
        )
    _require(
        "python-engineio",
        _calls(async_socket.AsyncSocket.receive, "schedule_ping", "_trigger_event", "close"),
        "AsyncSocket.receive no longer calls schedule_ping, server._trigger_event and close",
    )


def test_engineio_server_private_methods() -> None:
    server_cls = engineio.AsyncServer
    _require(
        "python-engineio",
        _params(server_cls._handle_connect) == ["self", "environ", "transport", "jsonp_index"],
        f"AsyncServer._handle_connect has parameters {_params(server_cls._handle_connect)}",
    )
    _require(
        "python-engineio",
        _calls(server_cls.handle_request, "_handle_connect", "_async"),
        "AsyncServer.handle_request no longer goes through _async and _handle_connect",
    )
    for name in ("_trigger_event", "_bad_request", "_unauthorized", "generate_id", "shutdown"):
        _require(
            "python-engineio", callable(getattr(server_cls, name, None)), f"AsyncServer.{name} gone"
        )
    _require(
        "python-engineio",
        inspect.iscoroutinefunction(engineio_asgi.translate_request)
        and _params(engineio_asgi.translate_request) == ["scope", "receive", "send"],
        "engineio.async_drivers.asgi.translate_request(scope, receive, send) changed",
    )


async def test_engineio_server_attributes_lean_engine_server_uses() -> None:
    server = _internals.LeanEngineServer(
        async_mode="asgi", transports=["websocket"], cors_allowed_origins=[]
    )
    _require(
        "python-engineio",
        server._async.get("translate_request") is _internals.translate_request,
        "AsyncServer._async (the driver dict) no longer holds translate_request",
    )
    _require(
        "python-engineio",
        server.start_service_task is False,
        "monitor_clients=False no longer turns the service task off",
    )
    for name in ("sockets", "ping_interval", "ping_interval_grace_period", "max_http_buffer_size"):
        _require("python-engineio", hasattr(server, name), f"AsyncServer.{name} gone")
    for reason in ("SERVER_DISCONNECT", "PING_TIMEOUT", "TRANSPORT_CLOSE"):
        _require(
            "python-engineio", hasattr(server.reason, reason), f"AsyncServer.reason.{reason} gone"
        )
    await server.shutdown()


# -- python-socketio -----------------------------------------------------------------


def test_socketio_server_private_methods() -> None:
    server_cls = socketio.AsyncServer
    expected = {
        "_engineio_server_class": ["self"],
        "_handle_eio_message": ["self", "eio_sid", "data"],
        "_handle_event": ["self", "eio_sid", "namespace", "id", "data"],
        "_send_packet": ["self", "eio_sid", "pkt"],
    }
    for name, params in expected.items():
        method = getattr(server_cls, name, None)
        _require(
            "python-socketio",
            method is not None and _params(method) == params,
            f"AsyncServer.{name} is {'gone' if method is None else _params(method)}, "
            f"expected parameters {params}",
        )
    _require(
        "python-socketio",
        _calls(socketio.base_server.BaseServer.__init__, "_engineio_server_class"),
        "BaseServer.__init__ no longer builds its engineio server from _engineio_server_class()",
    )


async def test_socketio_server_attributes_socket_server_uses() -> None:
    sio = _internals.SocketServer(async_mode="asgi", transports=["websocket"])
    _require(
        "python-socketio",
        isinstance(sio.eio, _internals.LeanEngineServer),
        "AsyncServer.eio is not the class _engineio_server_class() returns",
    )
    _require("python-socketio", hasattr(sio, "packet_class"), "AsyncServer.packet_class gone")
    _require(
        "python-socketio",
        type(sio.manager) is socketio.AsyncManager
        and _params(sio.manager.get_participants) == ["namespace", "room"],
        "the default manager is no longer AsyncManager with get_participants(namespace, room)",
    )
    _require(
        "python-socketio",
        _params(sio.manager.eio_sid_from_sid) == ["sid", "namespace"],
        "the manager's eio_sid_from_sid(sid, namespace) changed (SocketServer.authenticated)",
    )
    await sio.shutdown()


def test_uvicorn_offers_the_websocket_denial_response() -> None:
    # LeanEngineServer refuses a websocket over the per-IP cap with an HTTP 429 body.
    source = inspect.getsource(_internals.WebSocketsSansIOProtocol)
    _require(
        "uvicorn",
        '"websocket.http.response"' in source and "websocket.http.response.start" in source,
        "WebSocketsSansIOProtocol no longer offers the websocket.http.response extension",
    )


def test_socketio_redis_manager_private_methods() -> None:
    manager_cls = socketio.AsyncRedisManager
    for name in ("_redis_connect", "_publish", "_redis_listen_with_retries"):
        _require(
            "python-socketio",
            callable(getattr(manager_cls, name, None)),
            f"AsyncRedisManager.{name} gone",
        )
    _require(
        "python-socketio",
        inspect.isasyncgenfunction(manager_cls._redis_listen_with_retries),
        "AsyncRedisManager._redis_listen_with_retries is no longer an async generator",
    )
    _require(
        "python-socketio",
        _calls(manager_cls._listen, "_redis_listen_with_retries"),
        "AsyncRedisManager._listen no longer reads _redis_listen_with_retries",
    )
    _require(
        "python-socketio",
        _calls(async_pubsub_manager.AsyncPubSubManager.initialize, "thread"),
        "AsyncPubSubManager.initialize no longer keeps its listener task as .thread",
    )
    manager = _internals.RecoveringRedisManager("redis://127.0.0.1:1/0", on_recovered=_nothing)
    for name in ("redis", "pubsub", "connected", "channel", "json"):
        _require("python-socketio", hasattr(manager, name), f"AsyncRedisManager().{name} not set")


async def _nothing() -> None:
    pass


# -- uvicorn and websockets ----------------------------------------------------------


async def test_uvicorn_protocol_attributes_fit_the_slots() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        pass

    config = Config(app=app, ws=_internals.LeanWebSocketProtocol)
    config.load()
    protocol = _internals.LeanWebSocketProtocol(
        config, ServerState(), {}, asyncio.get_running_loop()
    )
    _require(
        "uvicorn",
        vars(protocol) == {},
        f"WebSocketsSansIOProtocol.__init__ now sets {sorted(vars(protocol))}, "
        "which LeanWebSocketProtocol.__slots__ does not name",
    )
    for name in ("handshake_complete", "initial_response", "disconnected", "close_sent", "conn"):
        _require("uvicorn", hasattr(protocol, name), f"WebSocketsSansIOProtocol().{name} gone")
    for name in ("send_text", "send_binary", "data_to_send"):
        _require(
            "websockets",
            callable(getattr(protocol.conn, name, None)),
            f"websockets' ServerProtocol.{name} gone (uvicorn's protocol.conn)",
        )


def test_uvicorn_protocol_uses_only_what_inbox_and_flag_offer() -> None:
    source = inspect.getsource(_internals.WebSocketsSansIOProtocol)
    for attribute, stand_in in (("queue", Inbox), ("writable", Flag)):
        used = set(re.findall(rf"self\.{attribute}\.(\w+)", source))
        _require("uvicorn", bool(used), f"WebSocketsSansIOProtocol no longer uses self.{attribute}")
        missing = {name for name in used if not hasattr(stand_in, name)}
        _require(
            "uvicorn",
            not missing,
            f"WebSocketsSansIOProtocol calls self.{attribute}.{sorted(missing)}, "
            f"which {stand_in.__name__} lacks",
        )


def test_websockets_invalid_state_is_what_a_closed_connection_raises() -> None:
    from websockets.exceptions import InvalidState
    from websockets.server import ServerProtocol

    conn = ServerProtocol()
    try:
        conn.send_text(b"before the handshake")
    except InvalidState:
        return
    except Exception as exc:
        _require("websockets", False, f"send_text on a connection not open raised {exc!r}")
    _require("websockets", False, "send_text on a connection not open no longer raises")
