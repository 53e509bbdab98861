"""Device-list events: watch contacts' device lists, to hear when they change."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bisik.proto import DevicesWatch, ErrorCode, ProtocolError
from bisik.server._services import Services
from bisik.server.realtime._base import ConcernBase, Connection, EventHandler
from bisik.server.rest._util import parse_model


def user_room(username: str) -> str:
    """Watchers of a user's device list (their contacts, and their own devices)."""
    return f"user:{username}"


class DevicesConcern(ConcernBase):
    """``devices_watch``: a room per watched user, at most ``max_watched`` per socket.

    Args:
        enter_room: puts a socket into a room.
        watched_by: the set of rooms a socket entered by watching (the namespace
            keeps it with the socket, so it goes when the socket does), or ``None``
            once the socket is gone.
        max_watched: the cap on that set.
    """

    def __init__(
        self,
        services: Services,
        enter_room: Callable[[str, str], Awaitable[None]],
        watched_by: Callable[[str], set[str] | None],
        max_watched: int,
    ) -> None:
        super().__init__(services)
        self._enter_room = enter_room
        self._watched_by = watched_by
        self._max_watched = max_watched

    def events(self) -> dict[str, EventHandler]:
        return {"devices_watch": self.watch}

    async def watch(self, conn: Connection, data: Any) -> dict[str, Any]:
        """Be told (``devices_changed``) when any of these users' devices change.

        Device lists are public to every signed-in device, so watching one
        reveals nothing; the rooms live in memory only (nothing is stored), and
        their number per socket is capped: each costs server memory until the
        socket goes. Names already watched cost nothing; an event that would
        pass the cap is refused whole (``too_many_watched``).
        """
        req = parse_model(DevicesWatch, data)
        names = dict.fromkeys(req.usernames)
        watched = self._watched_by(conn.sid)
        if watched is None:  # the socket went meanwhile
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "not authenticated")
        rooms = [room for room in map(user_room, names) if room not in watched]
        if len(watched) + len(rooms) > self._max_watched:
            raise ProtocolError(
                ErrorCode.TOO_MANY_WATCHED,
                f"a connection watches at most {self._max_watched} users; this one watches "
                f"{len(watched)}, and {len(rooms)} more were asked",
            )
        for room in rooms:
            watched.add(room)
            await self._enter_room(conn.sid, room)
        return {"watching": len(names)}
