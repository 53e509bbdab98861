"""Engine creation and migrations (applied on every start, before serving)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import sqlalchemy
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, event, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cur = dbapi_conn.cursor()
    # WAL + NORMAL is durable across process crashes; FULL also survives
    # power loss, which is what "acked means stored" promises.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class OneHop:
    """Runs a whole transaction of synchronous SQLAlchemy Core work in one step.

    aiosqlite pays a hop to its thread (and back) for every statement, begin
    and commit; on the message path that overhead, not SQLite, was most of the
    server's time. On SQLite, a sync engine on one dedicated thread runs each
    transaction in a single hop. On PostgreSQL the same function runs through
    ``AsyncConnection.run_sync`` (asyncpg under SQLAlchemy's greenlet).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sync: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        if engine.dialect.name == "sqlite":
            self._sync = sqlalchemy.create_engine(
                engine.url.set(drivername="sqlite"),
                connect_args={"timeout": 30, "check_same_thread": False},
            )
            event.listen(self._sync, "connect", _sqlite_pragmas)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="bisik-db")

    async def write(self, work: Callable[[Connection], T]) -> T:
        """``work`` inside one transaction (committed if it returns)."""
        if self._sync is None:
            async with self._engine.begin() as conn:
                return await conn.run_sync(work)
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._begin, work)

    async def read(self, work: Callable[[Connection], T]) -> T:
        if self._sync is None:
            async with self._engine.connect() as conn:
                return await conn.run_sync(work)
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._connect, work)

    def _begin(self, work: Callable[[Connection], T]) -> T:
        assert self._sync is not None
        with self._sync.begin() as conn:
            return work(conn)

    def _connect(self, work: Callable[[Connection], T]) -> T:
        assert self._sync is not None
        with self._sync.connect() as conn:
            return work(conn)

    def close(self) -> None:
        if self._thread is not None and self._sync is not None:
            self._thread.submit(self._sync.dispose).result()
            self._thread.shutdown(wait=True)


def _create_private(database: str | None) -> None:
    """Create a SQLite database file readable by the server's user only, before
    SQLite creates it with the umask's mode (0644); its -wal and -shm files get
    the database file's mode."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        _create_private(make_url(url).database)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _upgrade(connection: Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest Alembic revision."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
