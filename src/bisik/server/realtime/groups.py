"""Group events: membership (create, info, list, add, remove, leave, promote)
and ``group_send``, one Megolm ciphertext fanned out to every member device."""

from __future__ import annotations

from typing import Any

from bisik.proto import (
    GroupAdd,
    GroupCreate,
    GroupDeviceQuery,
    GroupMemberRef,
    GroupRef,
    GroupSend,
)
from bisik.server.realtime._base import ConcernBase, Connection, EventHandler
from bisik.server.rest._util import parse_model


class GroupsConcern(ConcernBase):
    def events(self) -> dict[str, EventHandler]:
        return {
            "group_create": self.create,
            "group_info": self.info,
            "group_list": self.list,
            "group_add": self.add,
            "group_remove": self.remove,
            "group_leave": self.leave,
            "group_promote": self.promote,
            "group_send": self.send,
            "group_device": self.device,
        }

    async def create(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(GroupCreate, data if data is not None else {})
        return (await self.services.groups.create(conn.device, req)).model_dump()

    async def info(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(GroupRef, data)
        return (await self.services.groups.info(conn.device, req)).model_dump()

    async def list(self, conn: Connection, data: Any) -> dict[str, Any]:
        return (await self.services.groups.list_groups(conn.device)).model_dump()

    async def add(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(GroupAdd, data)
        return (await self.services.groups.add(conn.device, req)).model_dump()

    async def remove(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(GroupMemberRef, data)
        return (await self.services.groups.remove(conn.device, req)).model_dump()

    async def leave(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(GroupRef, data)
        return (await self.services.groups.leave(conn.device, req)).model_dump()

    async def promote(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(GroupMemberRef, data)
        return (await self.services.groups.promote(conn.device, req)).model_dump()

    async def device(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(GroupDeviceQuery, data)
        return (await self.services.groups.device(conn.device, req)).model_dump()

    async def send(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(GroupSend, data)
        return (await self.services.messages.send_group(conn.device, req)).model_dump()
