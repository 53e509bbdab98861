"""Rendezvous mailboxes for device linking (bodies are end-to-end encrypted)."""

from __future__ import annotations

from starlette.requests import Request

from bisik.proto import (
    Done,
    ErrorCode,
    ProtocolError,
    RendezvousClose,
    RendezvousMessages,
    RendezvousRead,
    RendezvousToken,
    RendezvousWrite,
    RendezvousWritten,
)
from bisik.server.rest._util import ApiRoute, endpoint, read_body
from bisik.server.rest._util import services as svc


def _channel(request: Request) -> str:
    channel = request.path_params["channel"]
    if not isinstance(channel, str) or len(channel) > 64:
        raise ProtocolError(ErrorCode.NOT_FOUND, "this pairing code is unknown, used or expired")
    return channel


@endpoint
async def create(request: Request) -> RendezvousToken:
    """Open a pairing channel (the new device); valid for 5 minutes, usable once."""
    return await svc(request).rendezvous.create()


@endpoint
async def claim(request: Request) -> RendezvousToken:
    """Join a pairing channel (the existing device); only the first one gets in."""
    return await svc(request).rendezvous.claim(_channel(request))


@endpoint
async def write(request: Request) -> RendezvousWritten:
    """Post an opaque message to the other device."""
    req = await read_body(request, RendezvousWrite)
    return await svc(request).rendezvous.write(_channel(request), req)


@endpoint
async def read(request: Request) -> RendezvousMessages:
    """The other device's messages after ``after``, waiting up to ``wait`` seconds."""
    req = await read_body(request, RendezvousRead)
    return await svc(request).rendezvous.read(_channel(request), req)


@endpoint
async def close(request: Request) -> Done:
    """Delete the channel and everything in it."""
    req = await read_body(request, RendezvousClose)
    return await svc(request).rendezvous.close(_channel(request), req)


API: list[ApiRoute] = [
    ("POST", "/v1/rendezvous", create, None, RendezvousToken, False),
    ("POST", "/v1/rendezvous/{channel}/claim", claim, None, RendezvousToken, False),
    ("POST", "/v1/rendezvous/{channel}/write", write, RendezvousWrite, RendezvousWritten, False),
    ("POST", "/v1/rendezvous/{channel}/read", read, RendezvousRead, RendezvousMessages, False),
    ("POST", "/v1/rendezvous/{channel}/close", close, RendezvousClose, Done, False),
]
