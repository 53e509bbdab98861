"""Thin HTTP endpoints: authenticate, parse, call a handler, return."""

from bisik.server.rest._routes import build_routes

__all__ = ["build_routes"]
