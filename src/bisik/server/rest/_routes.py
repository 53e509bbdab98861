from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bisik import __version__
from bisik.proto import (
    PROTOCOL_VERSION,
    ChallengeRequest,
    ChallengeResponse,
    ClaimRequest,
    ClaimResponse,
    DeviceList,
    ErrorCode,
    KeyCount,
    ProtocolError,
    RegisterRequest,
    RegisterResponse,
    TokenRequest,
    TokenResponse,
    UploadKeysRequest,
)
from bisik.server._limits import Limits
from bisik.server.rest import backups, blobs, devices, rendezvous
from bisik.server.rest._util import ApiRoute, authenticated, endpoint, read_body, services


class Health(BaseModel):
    status: str
    version: str
    protocol: int


@endpoint
async def health(request: Request) -> Health:
    """Liveness and versions."""
    return Health(status="ok", version=__version__, protocol=PROTOCOL_VERSION)


@endpoint
async def register(request: Request) -> RegisterResponse:
    """Register a username with its first device and keys."""
    req = await read_body(request, RegisterRequest)
    return await services(request).accounts.register(req)


@endpoint
async def challenge(request: Request) -> ChallengeResponse:
    """Start challenge-response authentication for a device."""
    req = await read_body(request, ChallengeRequest)
    return await services(request).auth.challenge(req)


@endpoint
async def token(request: Request) -> TokenResponse:
    """Answer a challenge with the device's signature; get an access token."""
    req = await read_body(request, TokenRequest)
    return await services(request).auth.token(req)


@endpoint
async def upload_keys(request: Request) -> KeyCount:
    """Publish signed one-time keys and/or a new fallback key."""
    device = await authenticated(request)
    req = await read_body(request, UploadKeysRequest)
    return await services(request).keys.upload(device, req)


@endpoint
async def key_count(request: Request) -> KeyCount:
    """How many one-time keys the server holds for the calling device."""
    device = await authenticated(request)
    return await services(request).keys.count(device)


@endpoint
async def claim_keys(request: Request) -> ClaimResponse:
    """Take one one-time key (or the fallback key) per listed device."""
    device = await authenticated(request)
    req = await read_body(request, ClaimRequest)
    limits: Limits = request.app.state.namespace.limits
    exempt = limits.is_exempt(request.client.host if request.client else None)
    return await services(request).keys.claim(req, device, limited=not exempt)


@endpoint
async def user_devices(request: Request) -> DeviceList:
    """A user's identity key and signed device list."""
    await authenticated(request)
    username = request.path_params["username"]
    if not isinstance(username, str) or len(username) > 64:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "username too long")
    return await services(request).accounts.device_list(username)


# (method, path, endpoint, request model, response model, needs auth)
_API: list[ApiRoute] = [
    ("GET", "/v1/health", health, None, Health, False),
    ("POST", "/v1/accounts", register, RegisterRequest, RegisterResponse, False),
    ("POST", "/v1/auth/challenge", challenge, ChallengeRequest, ChallengeResponse, False),
    ("POST", "/v1/auth/token", token, TokenRequest, TokenResponse, False),
    ("POST", "/v1/keys/upload", upload_keys, UploadKeysRequest, KeyCount, True),
    ("GET", "/v1/keys/count", key_count, None, KeyCount, True),
    ("POST", "/v1/keys/claim", claim_keys, ClaimRequest, ClaimResponse, True),
    ("GET", "/v1/users/{username}/devices", user_devices, None, DeviceList, True),
    *devices.API,
    *rendezvous.API,
    *backups.API,
    *blobs.API,
]


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 description, generated from the route table and models."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for method, path, fn, req, resp, auth in _API:
        op: dict[str, Any] = {
            "summary": (fn.__doc__ or "").strip(),
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{resp.__name__}"}
                        }
                    },
                },
                "default": {"description": "Error: {error: {code, message}}"},
            },
        }
        for model in (req, resp):
            if model is not None:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
        if req is not None:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{req.__name__}"}}
                },
            }
        if auth:
            op["security"] = [{"bearer": []}]
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Bisik server", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi_endpoint(request: Request) -> Response:
    return JSONResponse(openapi())


def build_routes() -> list[Route]:
    routes = [Route(path, fn, methods=[method]) for method, path, fn, *_ in _API]
    routes += blobs.RAW_ROUTES
    routes.append(Route("/v1/openapi.json", openapi_endpoint, methods=["GET"]))
    return routes
