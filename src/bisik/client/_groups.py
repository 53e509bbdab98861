"""Groups: creating and managing them (the server keeps who is in a group,
never its name: that travels end-to-end encrypted to the members)."""

from __future__ import annotations

from typing import Any

import pydantic

from bisik.client._clock import Clock
from bisik.client._devices import DeviceDirectory
from bisik.client._errors import ClientError
from bisik.client._group_store import GroupStore, LocalGroup
from bisik.client._membership import Membership
from bisik.client._models import DeviceStamp, GroupMeta, group_conversation
from bisik.client._outbox import Outbox
from bisik.client._store import LocalStore
from bisik.client._transport import Transport
from bisik.proto import validate_username


class Groups:
    def __init__(
        self,
        *,
        db: LocalStore,
        groups: GroupStore,
        membership: Membership,
        outbox: Outbox,
        me: DeviceStamp,
        transport: Transport,
        devices: DeviceDirectory,
        clock: Clock,
    ) -> None:
        self._db = db
        self._groups = groups
        self._membership = membership
        self._outbox = outbox
        self._me = me
        self._transport = transport
        self._devices = devices
        self._clock = clock

    async def create_group(
        self, name: str, members: list[str], *, description: str = ""
    ) -> LocalGroup:
        """Create a group with us as admin; its name travels end-to-end encrypted."""
        meta = self._meta(name, description)
        for username in members:
            validate_username(username)
        info = await self._transport.call("group_create", {"members": members})
        group_id = str(info["group_id"])
        with self._db.transaction():
            self._membership.save_info(info)
            self._groups.set_meta(group_id, meta.name, meta.description, self._clock())
        await self._devices.watch([m["username"] for m in info["members"]])
        self._queue_group(group_id, {"type": "meta", "meta": meta.model_dump()})
        return self._membership.group(group_id)

    async def add_members(self, ref: str, usernames: list[str]) -> LocalGroup:
        """Add members (admins only). They can read what is sent from now on."""
        group = self._membership.group(ref)
        for username in usernames:
            validate_username(username)
        info = await self._transport.call(
            "group_add", {"group_id": group.group_id, "usernames": usernames}
        )
        with self._db.transaction():
            self._membership.save_info(info)
        await self._devices.watch(usernames)
        # The new members learn the group's name from the next message.
        self._queue_group(
            group.group_id,
            {"type": "meta", "meta": {"name": group.name, "description": group.description}},
        )
        return self._membership.group(group.group_id)

    async def remove_member(self, ref: str, username: str) -> LocalGroup:
        """Remove a member (admins only); our next message uses a new session."""
        group = self._membership.group(ref)
        info = await self._transport.call(
            "group_remove", {"group_id": group.group_id, "username": username}
        )
        with self._db.transaction():
            self._membership.save_info(info)
            self._groups.drop_outbound(group.group_id)
        return self._membership.group(group.group_id)

    async def leave_group(self, ref: str) -> None:
        group = self._membership.group(ref)
        await self._transport.call("group_leave", {"group_id": group.group_id})
        self._membership.left(group.group_id, group.version)

    async def promote(self, ref: str, username: str) -> LocalGroup:
        group = self._membership.group(ref)
        info = await self._transport.call(
            "group_promote", {"group_id": group.group_id, "username": username}
        )
        with self._db.transaction():
            self._membership.save_info(info)
        return self._membership.group(group.group_id)

    async def rename_group(self, ref: str, name: str, description: str | None = None) -> None:
        """Rename (admins only): an encrypted control message to every member."""
        group = self._membership.group(ref)
        if group.role_of(self._me.username) != "admin":
            raise ClientError("only an admin can rename the group")
        meta = self._meta(name, group.description if description is None else description)
        with self._db.transaction():
            self._groups.set_meta(group.group_id, meta.name, meta.description, self._clock())
        self._queue_group(group.group_id, {"type": "meta", "meta": meta.model_dump()})

    def waiting_count(self, ref: str | None = None) -> int:
        """Group messages still waiting for their key."""
        items = self._groups.waiting()
        if ref is not None:
            group_id = self._membership.group(ref).group_id
            items = [w for w in items if w.group_id == group_id]
        return len(items)

    def _meta(self, name: str, description: str) -> GroupMeta:
        try:
            return GroupMeta(name=name.strip(), description=description)
        except pydantic.ValidationError:
            raise ClientError(
                "a group name is 1-100 characters, a description at most 1,000"
            ) from None

    def _queue_group(self, group_id: str, payload: dict[str, Any]) -> str:
        return self._outbox.queue(group_conversation(group_id), {**payload, "group": group_id})
