"""The Bisik server: relays and stores only ciphertext and public keys."""

from bisik.server._app import create_app
from bisik.server._config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
