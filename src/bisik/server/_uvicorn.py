"""How uvicorn serves Bisik: its websocket protocol and options, shared by every way to run it.

``bisik server``, :class:`~bisik.server.EmbeddedServer` and the benchmarks all
pass :func:`uvicorn_options`, so that what is measured is what runs. The
protocol class reaches into uvicorn's internals and lives in
:mod:`bisik.server._internals`.
"""

from __future__ import annotations

from typing import Any

from bisik.server._internals import LeanWebSocketProtocol

__all__ = ["LeanWebSocketProtocol", "uvicorn_options"]


def uvicorn_options(max_message_bytes: int) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` besides the app, host
    and port; ``max_message_bytes`` is the server's limit (``max_body_bytes``)."""
    return {
        "ws": LeanWebSocketProtocol,
        # Engine.IO drops a packet over the limit, in characters; the websocket
        # layer refuses a frame over four times that many bytes (UTF-8) before
        # buffering it, instead of uvicorn's 16 MiB per connection.
        "ws_max_size": 4 * max_message_bytes,
        # Engine.IO's own heartbeat (ping_interval / ping_timeout) detects dead
        # clients; a second one at the websocket layer is only more wake-ups.
        "ws_ping_interval": None,
        "ws_ping_timeout": None,
        # A browser offers permessage-deflate and uvicorn accepted it: a zlib
        # compressor and decompressor per connection (tens of KB each) to
        # squeeze ciphertext, which does not compress.
        "ws_per_message_deflate": False,
        # Access logs would record who fetched whose keys, and when: the server
        # keeps no record it does not need.
        "access_log": False,
        # Longer than any client keeps an idle connection (the SDK: 2 s).
        "timeout_keep_alive": 30,
    }
