from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bisik.server._services import Services
from bisik.server.stores import DeviceHandle


@dataclass(frozen=True)
class Connection:
    """One authenticated socket: its id and the device behind it."""

    sid: str
    device: DeviceHandle


# An event handler gets the connection and the raw payload and returns the ack body.
EventHandler = Callable[[Connection, Any], Awaitable[dict[str, Any]]]


class ConcernBase:
    def __init__(self, services: Services) -> None:
        self.services = services
