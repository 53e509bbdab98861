"""Message events: send and send_many (store, then ack), sync (backlog pages),
ack (delete delivered)."""

from __future__ import annotations

from typing import Any

from bisik.proto import AckRequest, SendMany, SendRequest, SyncRequest
from bisik.server.realtime._base import ConcernBase, Connection, EventHandler
from bisik.server.rest._util import parse_model


class MessageConcern(ConcernBase):
    def events(self) -> dict[str, EventHandler]:
        return {"send": self.send, "send_many": self.send_many, "sync": self.sync, "ack": self.ack}

    async def send(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(SendRequest, data)
        result = await self.services.messages.send(conn.device, req)
        return result.model_dump()

    async def send_many(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(SendMany, data)
        result = await self.services.messages.send_many(conn.device, req)
        return result.model_dump(exclude_none=True)

    async def sync(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(SyncRequest, data if data is not None else {})
        result = await self.services.messages.sync(conn.device, req)
        return result.model_dump()

    async def ack(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(AckRequest, data)
        result = await self.services.messages.ack(conn.device, req)
        return result.model_dump()


def messages_in(event: str, data: Any) -> int:
    """How many messages an event sends, for the per-device rate limit."""
    if event == "send_many" and isinstance(data, dict) and isinstance(data.get("messages"), list):
        return max(1, len(data["messages"]))
    return 1
