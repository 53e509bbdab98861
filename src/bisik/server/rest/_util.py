from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bisik.proto import ErrorCode, ProtocolError
from bisik.server._limits import STORAGE_UNAVAILABLE, storage_problem
from bisik.server._services import Services
from bisik.server.stores import DeviceRow

log = logging.getLogger("bisik.server.rest")

M = TypeVar("M", bound=BaseModel)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def validation_message(exc: ValidationError) -> str:
    """A short, user-readable summary; never echoes the offending values."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - 5
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def parse_model(model: type[M], data: object) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, validation_message(exc)) from None


async def read_body(request: Request, model: type[M], *, limit: int | None = None) -> M:
    """Read and validate a JSON body of at most ``limit`` bytes (default: the server's)."""
    limit = limit or services(request).config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, f"body over {limit} bytes")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: nesting deeper than the parser's recursion limit.
        raise ProtocolError(ErrorCode.BAD_REQUEST, "body is not valid JSON") from None
    return parse_model(model, data)


async def authenticated(request: Request) -> DeviceRow:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "missing 'Authorization: Bearer <token>'")
    return await services(request).auth.authenticate(token.strip())


Endpoint = Callable[[Request], Awaitable[BaseModel]]


def endpoint(fn: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """Run ``fn`` and turn its model or ``ProtocolError`` into a JSON response."""

    async def run(request: Request) -> Response:
        try:
            result = await fn(request)
        except ProtocolError as exc:
            return JSONResponse(exc.to_body(), status_code=exc.http_status)
        except OperationalError as exc:
            # Disk full, database locked or unreachable: not a bug, and it passes.
            log.warning("storage unavailable in %s: %s", fn.__name__, storage_problem(exc))
            err = ProtocolError(ErrorCode.UNAVAILABLE, STORAGE_UNAVAILABLE)
            return JSONResponse(err.to_body(), status_code=503, headers={"Retry-After": "1"})
        except Exception:
            # A bug: log the endpoint, never the request body.
            log.exception("unhandled error in %s", fn.__name__)
            err = ProtocolError(ErrorCode.INTERNAL, "internal server error")
            return JSONResponse(err.to_body(), status_code=500)
        return JSONResponse(result.model_dump(mode="json"))

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method) in the ``{"error"}`` shape."""
    assert isinstance(exc, HTTPException)
    code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.BAD_REQUEST
    err = ProtocolError(code, exc.detail)
    return JSONResponse(err.to_body(), status_code=exc.status_code, headers=exc.headers)


# One row of the HTTP API: (method, path, endpoint, request model, response model, auth).
ApiRoute = tuple[str, str, Any, type[BaseModel] | None, type[BaseModel], bool]


def path_device_id(request: Request) -> str:
    device_id = request.path_params["device_id"]
    if not isinstance(device_id, str) or not 4 <= len(device_id) <= 64:
        raise ProtocolError(ErrorCode.UNKNOWN_DEVICE, "no such device")
    return device_id
