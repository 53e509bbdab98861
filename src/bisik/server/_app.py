"""The ASGI application: Starlette HTTP API + python-socketio, one process."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import socketio
from starlette.applications import Starlette

from bisik.server._config import ServerConfig
from bisik.server._db import create_engine, migrate
from bisik.server._services import Services
from bisik.server.realtime import BisikNamespace, SocketNotifier
from bisik.server.rest import build_routes

log = logging.getLogger("bisik.server")


def create_app(config: ServerConfig) -> Any:
    """Build the ASGI app. Migrations run at startup, before any request is served."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(config.resolved_database_url)
    notifier = SocketNotifier()
    services = Services.build(config, engine, notifier)

    manager = None
    if config.redis_url:
        manager = socketio.AsyncRedisManager(config.redis_url)
    sio = socketio.AsyncServer(
        async_mode="asgi",
        client_manager=manager,
        cors_allowed_origins=[],
        transports=["websocket"],
        max_http_buffer_size=config.max_body_bytes,
        logger=False,
        engineio_logger=False,
    )
    notifier.sio = sio
    namespace = BisikNamespace(services)
    sio.register_namespace(namespace)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await migrate(engine)
        log.info("database ready")
        try:
            yield
        finally:
            await engine.dispose()

    http = Starlette(routes=build_routes(), lifespan=lifespan)
    http.state.services = services
    http.state.sio = sio
    http.state.namespace = namespace
    return socketio.ASGIApp(sio, other_asgi_app=http, socketio_path="socket.io")
