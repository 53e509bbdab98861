"""ASGI factory for running the Bisik server in its own process from a benchmark.

``bench_latency.py`` starts it as::

    BISIK_BENCH_DATA_DIR=/tmp/x python -m uvicorn --factory \\
        --app-dir bench _server_app:app --host 127.0.0.1 --port PORT

SQLite (aiosqlite, WAL) in ``$BISIK_BENCH_DATA_DIR``, the same default as the real server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bisik.server import ServerConfig, create_app


def app() -> Any:
    return create_app(ServerConfig(data_dir=Path(os.environ["BISIK_BENCH_DATA_DIR"])))
