"""Run the server inside an existing event loop (the demo, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

from bisik.server._app import create_app
from bisik.server._config import ServerConfig
from bisik.server._uvicorn import uvicorn_options


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The host program owns Ctrl-C; an embedded server must not swallow it.
        yield


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedServer:
    """A real Bisik server on a loopback port, served as a task of the running loop.

    It can be stopped and started again on the same port and data (a restart).
    """

    def __init__(self, config: ServerConfig, port: int | None = None, host: str = "127.0.0.1"):
        self.config = config
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.app: Any = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._wait_for_port()
        self.app = create_app(self.config)
        self._server = _Server(
            uvicorn.Config(
                self.app,
                host=self.host,
                port=self.port,
                log_level="warning",
                lifespan="on",
                timeout_graceful_shutdown=3,
                **uvicorn_options(self.config.max_body_bytes),
            )
        )
        self._task = asyncio.create_task(self._server.serve(), name="bisik-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the server stopped during startup")
            await asyncio.sleep(0.01)

    async def _wait_for_port(self, timeout: float = 10.0) -> None:
        """On a restart, the port may be briefly held by another socket (an
        outgoing connection's ephemeral port): wait until it can be bound."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.host, self.port))
                    return
                except OSError:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, 15)
        self._server = None
        self._task = None

    @property
    def services(self) -> Any:
        """The handlers (for tests and admin tasks in the same process)."""
        return self.app.other_asgi_app.state.services
