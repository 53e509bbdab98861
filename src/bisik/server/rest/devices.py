"""Devices: add a linked device, list, rename and revoke your own."""

from __future__ import annotations

from starlette.requests import Request

from bisik.proto import (
    AddDeviceRequest,
    DeviceGrant,
    Done,
    OwnDevices,
    RegisterResponse,
    RenameDeviceRequest,
)
from bisik.server.rest._util import ApiRoute, authenticated, endpoint, path_device_id, read_body
from bisik.server.rest._util import services as svc


@endpoint
async def add_device(request: Request) -> RegisterResponse:
    """Register a further device, signed by the account's identity key."""
    req = await read_body(request, AddDeviceRequest)
    return await svc(request).devices.add(req)


@endpoint
async def grant_device(request: Request) -> DeviceGrant:
    """A one-time permission for a new device to join the caller's account (linking)."""
    device = await authenticated(request)
    return await svc(request).devices.grant(device)


@endpoint
async def own_devices(request: Request) -> OwnDevices:
    """The caller's account's devices (names encrypted), with created and last-seen times."""
    device = await authenticated(request)
    return await svc(request).devices.list_own(device)


@endpoint
async def rename_device(request: Request) -> Done:
    """Set a device's (encrypted) name."""
    device = await authenticated(request)
    req = await read_body(request, RenameDeviceRequest)
    return await svc(request).devices.rename(device, path_device_id(request), req)


@endpoint
async def revoke_device(request: Request) -> Done:
    """Revoke one of the caller's own devices: tokens, keys and queue go; it can't come back."""
    device = await authenticated(request)
    return await svc(request).devices.revoke(device, path_device_id(request))


API: list[ApiRoute] = [
    ("POST", "/v1/devices", add_device, AddDeviceRequest, RegisterResponse, False),
    ("POST", "/v1/devices/grant", grant_device, None, DeviceGrant, True),
    ("GET", "/v1/devices", own_devices, None, OwnDevices, True),
    ("PUT", "/v1/devices/{device_id}/name", rename_device, RenameDeviceRequest, Done, True),
    ("DELETE", "/v1/devices/{device_id}", revoke_device, None, Done, True),
]
