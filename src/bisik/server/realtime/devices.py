"""Device-list events: watch contacts' device lists, to hear when they change."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bisik.proto import DevicesWatch
from bisik.server._services import Services
from bisik.server.realtime._base import ConcernBase, Connection, EventHandler
from bisik.server.rest._util import parse_model


def user_room(username: str) -> str:
    """Watchers of a user's device list (their contacts, and their own devices)."""
    return f"user:{username}"


class DevicesConcern(ConcernBase):
    def __init__(self, services: Services, enter_room: Callable[[str, str], Awaitable[None]]):
        super().__init__(services)
        self._enter_room = enter_room

    def events(self) -> dict[str, EventHandler]:
        return {"devices_watch": self.watch}

    async def watch(self, conn: Connection, data: Any) -> dict[str, Any]:
        """Be told (``devices_changed``) when any of these users' devices change.

        Device lists are public to every signed-in device, so watching one
        reveals nothing; the rooms live in memory only (nothing is stored).
        """
        req = parse_model(DevicesWatch, data)
        for username in dict.fromkeys(req.usernames):
            await self._enter_room(conn.sid, user_room(username))
        return {"watching": len(set(req.usernames))}
