"""Shared fixtures: a real Bisik server (uvicorn, in this event loop) and real clients.

Set ``BISIK_TEST_POSTGRES_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/test``)
to run every server test on PostgreSQL as well as SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import socketio

from bisik.client import Client, KdfParams
from bisik.server import EmbeddedServer, ServerConfig, free_port

# Session-wide check that no plaintext a test sent reaches a server's storage.
pytest_plugins = ["tests._canary"]

POSTGRES_URL = os.environ.get("BISIK_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("BISIK_TEST_REDIS_URL")

# Cheap Argon2id for the many throwaway profiles tests create; the at-rest
# tests use the real defaults.
FAST_KDF = KdfParams(time_cost=1, memory_cost_kib=8 * 1024, parallelism=1)
PASSWORD = "correct horse battery staple"


RunningServer = EmbeddedServer


def now_ms() -> int:
    """Now, as a ``sent_at``: receivers refuse content with an impossible time."""
    return int(time.time() * 1000)


async def _postgres_database() -> tuple[str, Callable[[], Awaitable[None]]]:
    import asyncpg

    assert POSTGRES_URL is not None
    name = f"bisik_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base = POSTGRES_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    return url, drop


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres" and not POSTGRES_URL:
        pytest.skip("PostgreSQL run: set BISIK_TEST_POSTGRES_URL (CI does)")
    return str(request.param)


@pytest.fixture
async def server_factory(
    tmp_path: Path, database: str
) -> AsyncIterator[Callable[..., Awaitable[RunningServer]]]:
    started: list[RunningServer] = []
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def factory(**overrides: Any) -> RunningServer:
        db_url = None
        if database == "postgres":
            db_url, drop = await _postgres_database()
            cleanups.append(drop)
        config = ServerConfig(
            data_dir=tmp_path / f"server{len(started)}", database_url=db_url, **overrides
        )
        server = RunningServer(config, free_port())
        await server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        await server.stop()
    for cleanup in cleanups:
        await cleanup()


@pytest.fixture
async def server(server_factory: Callable[..., Awaitable[RunningServer]]) -> RunningServer:
    return await server_factory()


ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_client(tmp_path: Path, server: RunningServer) -> AsyncIterator[ClientFactory]:
    """Create an account with its own home and connect it (``connect=False`` to skip)."""
    clients: list[Client] = []

    async def factory(username: str, *, connect: bool = True, **kwargs: Any) -> Client:
        client = await Client.create_account(
            tmp_path / "homes" / username,
            server_url=kwargs.pop("server_url", server.url),
            username=username,
            password=kwargs.pop("password", PASSWORD),
            kdf=kwargs.pop("kdf", FAST_KDF),
            **kwargs,
        )
        clients.append(client)
        if connect:
            await client.connect()
            await asyncio.wait_for(client.synced.wait(), 10)
        return client

    yield factory
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


async def next_event(queue: asyncio.Queue[Any], kind: type, timeout: float = 10.0) -> Any:
    """The next event of ``kind`` from a client subscription."""
    async with asyncio.timeout(timeout):
        while True:
            event = await queue.get()
            if isinstance(event, kind):
                return event


async def close_socket_client(sio: socketio.AsyncClient) -> None:
    """Disconnect a raw Socket.IO client and close its aiohttp session, which
    Engine.IO leaves open on some paths (a connection the server dropped or
    refused): garbage-collected later, it fails whichever test runs then."""
    await sio.disconnect()
    session = getattr(sio.eio, "http", None)
    if session is not None and not session.closed:
        await session.close()
