"""The ASGI application: Starlette HTTP API + python-socketio, one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import socketio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from bisik.proto import SocketPacket
from bisik.server._config import ServerConfig
from bisik.server._db import create_engine, migrate
from bisik.server._internals import RecoveringRedisManager
from bisik.server._limits import RateLimitMiddleware
from bisik.server._services import Services
from bisik.server.realtime import BisikNamespace, SocketNotifier, SocketServer
from bisik.server.rest import build_routes, http_exception

log = logging.getLogger("bisik.server")


def create_app(config: ServerConfig) -> Any:
    """Build the ASGI app. Migrations run at startup, before any request is served."""
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = create_engine(config.resolved_database_url)
    notifier = SocketNotifier()
    services = Services.build(config, engine, notifier)

    manager = None
    if config.redis_url:

        async def resync_here() -> None:
            # Pushes published while Redis was away are lost: clients page their queues.
            await sio.emit("resync", {}, ignore_queue=True)

        manager = RecoveringRedisManager(config.redis_url, on_recovered=resync_here)
    sio = SocketServer(
        async_mode="asgi",
        client_manager=manager,
        cors_allowed_origins=[],
        transports=["websocket"],
        max_http_buffer_size=config.max_body_bytes,
        ping_interval=config.ping_interval_s,
        ping_timeout=config.ping_timeout_s,
        logger=False,
        engineio_logger=False,
        serializer=SocketPacket,
    )
    notifier.sio = sio
    namespace = BisikNamespace(services)
    sio.register_namespace(namespace)
    # The per-address cap counts every websocket, before it authenticates.
    sio.guard_transports(namespace.limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await migrate(engine)
        if manager is None:
            # A lone process: no socket survived the restart.
            await services.presence_store.reset_online()
        log.info("database ready")
        blob_gc = asyncio.create_task(services.blobs.run_gc())
        purge = asyncio.create_task(services.messages.run_purge())
        rendezvous_purge = asyncio.create_task(services.rendezvous.run_purge())
        try:
            yield
        finally:
            blob_gc.cancel()
            purge.cancel()
            rendezvous_purge.cancel()
            await asyncio.gather(blob_gc, purge, rendezvous_purge, return_exceptions=True)
            await sio.shutdown()  # its heartbeat timer and tasks
            await services.close()
            if manager is not None:
                await manager.close()
            await engine.dispose()

    http = Starlette(
        routes=build_routes(),
        lifespan=lifespan,
        exception_handlers={HTTPException: http_exception},
    )
    http.state.services = services
    http.state.sio = sio
    http.state.namespace = namespace
    return socketio.ASGIApp(
        sio, other_asgi_app=RateLimitMiddleware(http, namespace.limits), socketio_path="socket.io"
    )
