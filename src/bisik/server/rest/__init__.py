"""Thin HTTP endpoints: authenticate, parse, call a handler, return."""

from bisik.server.rest._routes import build_routes
from bisik.server.rest._util import http_exception

__all__ = ["build_routes", "http_exception"]
