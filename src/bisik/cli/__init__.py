"""The ``bisik`` command line. Talks to ``bisik.client`` only (and starts the server)."""

from bisik.cli._main import main

__all__ = ["main"]
