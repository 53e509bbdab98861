"""Message events: send (store, then ack), sync (backlog pages), ack (delete delivered)."""

from __future__ import annotations

from typing import Any

from bisik.proto import AckRequest, SendRequest, SyncRequest
from bisik.server.realtime._base import ConcernBase, Connection, EventHandler
from bisik.server.rest._util import parse_model


class MessageConcern(ConcernBase):
    def events(self) -> dict[str, EventHandler]:
        return {"send": self.send, "sync": self.sync, "ack": self.ack}

    async def send(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(SendRequest, data)
        result = await self.services.messages.send(conn.device, req)
        return result.model_dump()

    async def sync(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(SyncRequest, data if data is not None else {})
        result = await self.services.messages.sync(conn.device, req)
        return result.model_dump()

    async def ack(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(AckRequest, data)
        result = await self.services.messages.ack(conn.device, req)
        return result.model_dump()
