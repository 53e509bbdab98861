from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bisik.server._services import Services
from bisik.server.stores import DeviceRow


@dataclass(frozen=True)
class Connection:
    """One authenticated socket: its id and the device behind it."""

    sid: str
    device: DeviceRow


# An event handler gets the connection and the raw payload and returns the ack body.
EventHandler = Callable[[Connection, Any], Awaitable[dict[str, Any]]]


class Concern(Protocol):
    """A group of socket events for one area (message, crypto, presence...)."""

    def events(self) -> dict[str, EventHandler]: ...


class ConnectionHooks(Protocol):
    async def on_connected(self, sid: str, device: DeviceRow) -> None: ...

    async def on_disconnected(self, sid: str, device: DeviceRow) -> None: ...


class ConcernBase:
    def __init__(self, services: Services) -> None:
        self.services = services
