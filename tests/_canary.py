"""Session-wide canary: no plaintext a test sent may ever reach a server's storage.

Loaded by ``tests/conftest.py`` as a plugin. Every text and caption that any test
hands to ``Client.send_text`` / ``Client.send_file`` is recorded, as is the output
of the server's loggers. When the session ends, every server data directory the
tests used (any directory under the session's temp root holding
``bisik.sqlite3``: the database, its WAL, blobs and ``server.log``), the captured
log and every PostgreSQL test database (read just before it is dropped) are
searched for each recorded plaintext and for the marker ``canary-`` that tests
put into their secrets. A hit fails the session.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.conftest as shared
from bisik.client import Client

MARKER = b"canary-"
MIN_LEN = 8  # shorter texts ("hi", "ok") appear in any file by chance
SERVER_LOGGERS = ("bisik.server", "socketio", "engineio", "uvicorn")

plaintexts: set[str] = set()
leaks: list[str] = []


def _record(text: object) -> None:
    if isinstance(text, str) and len(text.encode()) >= MIN_LEN:
        plaintexts.add(text)


def _needles() -> list[bytes]:
    return [MARKER, *(t.encode() for t in plaintexts)]


def _scan(data: bytes, where: str) -> None:
    lowered = data.lower()
    for needle in _needles():
        found = needle in lowered if needle == MARKER else needle in data
        if found:
            leaks.append(f"{where}: {needle[:60]!r}")


# -- recording the plaintexts ------------------------------------------------------

_send_text = Client.send_text
_send_file = Client.send_file


async def _recording_send_text(self: Client, peer: str, text: str, **kwargs: Any) -> Any:
    _record(text)
    return await _send_text(self, peer, text, **kwargs)


async def _recording_send_file(self: Client, peer: str, path: Path, **kwargs: Any) -> Any:
    _record(kwargs.get("caption"))
    return await _send_file(self, peer, path, **kwargs)


# -- PostgreSQL: read each test database before it is dropped -----------------------

_postgres_database = shared._postgres_database


async def _scanned_postgres_database() -> tuple[str, Callable[[], Awaitable[None]]]:
    import asyncpg

    url, drop = await _postgres_database()

    async def scan_then_drop() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            for (table,) in tables:
                rows = await conn.fetch(f'SELECT t::text FROM "{table}" t')
                _scan("\n".join(r[0] for r in rows).encode(), f"postgres {url} {table}")
        finally:
            await conn.close()
        await drop()

    return url, scan_then_drop


# Before any test module copies the name (``from tests.conftest import ...``).
shared._postgres_database = _scanned_postgres_database


class _LogFile(logging.Handler):
    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self.file = path.open("a", encoding="utf-8", errors="backslashreplace")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.file.write(self.format(record) + "\n")
            if record.exc_info:
                self.file.write(logging.Formatter().formatException(record.exc_info) + "\n")
        except Exception:
            self.handleError(record)


@pytest.fixture(scope="session", autouse=True)
def _no_plaintext_reaches_the_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    Client.send_text = _recording_send_text  # type: ignore[method-assign]
    Client.send_file = _recording_send_file  # type: ignore[method-assign]
    root = tmp_path_factory.getbasetemp()
    handler = _LogFile(root / "server-loggers.log")
    for name in SERVER_LOGGERS:
        logging.getLogger(name).addHandler(handler)
    try:
        yield
    finally:
        for name in SERVER_LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        handler.file.close()
        Client.send_text = _send_text  # type: ignore[method-assign]
        Client.send_file = _send_file  # type: ignore[method-assign]
    scanned = [handler.file.name]
    _scan(Path(handler.file.name).read_bytes(), "server loggers")
    for database in root.rglob("bisik.sqlite3"):
        for path in database.parent.rglob("*"):
            if path.is_file():
                _scan(path.read_bytes(), str(path))
                scanned.append(str(path))
    assert not leaks, (
        f"plaintext found in server storage ({len(plaintexts)} canaries, "
        f"{len(scanned)} files):\n" + "\n".join(leaks[:20])
    )
