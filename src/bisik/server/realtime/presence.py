"""Presence, privacy settings and Web Push subscriptions over the socket.

Presence reaches only conversation partners (membership checked by the
server), and only between users who both share it.
"""

from __future__ import annotations

from typing import Any

from bisik.proto import PresenceQuery, PushSubscription, Settings
from bisik.server.realtime._base import ConcernBase, Connection, EventHandler
from bisik.server.rest._util import parse_model
from bisik.server.stores import DeviceHandle


class PresenceConcern(ConcernBase):
    def events(self) -> dict[str, EventHandler]:
        return {
            "presence": self.query,
            "settings": self.settings,
            "push_subscribe": self.push_subscribe,
            "push_unsubscribe": self.push_unsubscribe,
            "push_key": self.push_key,
        }

    async def on_connected(self, sid: str, device: DeviceHandle) -> None:
        await self.services.presence.connected(device)

    async def on_disconnected(self, sid: str, device: DeviceHandle) -> None:
        await self.services.presence.disconnected(device)

    async def query(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(PresenceQuery, data)
        return (await self.services.presence.query(conn.device, req.username)).model_dump()

    async def settings(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(Settings, data if data is not None else {})
        return (await self.services.presence.settings(conn.device, req)).model_dump()

    async def push_subscribe(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(PushSubscription, data)
        return (await self.services.push.subscribe(conn.device, req)).model_dump()

    async def push_unsubscribe(self, conn: Connection, data: Any) -> dict[str, Any]:
        return (await self.services.push.unsubscribe(conn.device)).model_dump()

    async def push_key(self, conn: Connection, data: Any) -> dict[str, Any]:
        return (await self.services.push.public_key()).model_dump()
