"""The Bisik server: relays and stores only ciphertext and public keys."""

from bisik.server._app import create_app
from bisik.server._config import ServerConfig
from bisik.server._embedded import EmbeddedServer, free_port

__all__ = ["EmbeddedServer", "ServerConfig", "create_app", "free_port"]
