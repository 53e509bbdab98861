"""Group membership: create, add, remove, leave, promote, and who may see it.

The server knows who is in a group (it routes the group's messages and checks
membership on every group operation) and nothing else: names, descriptions
and avatars travel end-to-end encrypted inside the group.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal

from bisik.proto import (
    MAX_GROUP_MEMBERS,
    ErrorCode,
    GroupAdd,
    GroupChange,
    GroupCreate,
    GroupDeviceInfo,
    GroupDeviceQuery,
    GroupInfo,
    GroupList,
    GroupMember,
    GroupMemberRef,
    GroupRef,
    GroupSummary,
    ProtocolError,
)
from bisik.server._clock import now_ms
from bisik.server.stores import DeviceHandle
from bisik.server.stores.groups import (
    Change,
    GroupNotFound,
    GroupRow,
    GroupStore,
    NotAMember,
    NotAnAdmin,
    TooManyMembers,
)

# Tells a user's own devices about a change to one of their groups.
GroupNotify = Callable[[Iterable[str], GroupChange], Awaitable[None]]

# Member lists kept built (see GroupsHandler.info).
INFOS_KEPT = 256


def _info(group: GroupRow) -> GroupInfo:
    return GroupInfo(
        group_id=group.group_id,
        version=group.version,
        created_at=group.created_at,
        members=[
            GroupMember(
                username=m.username,
                role="admin" if m.role == "admin" else "member",
                added_at=m.added_at,
            )
            for m in group.members
        ],
    )


class GroupsHandler:
    def __init__(self, store: GroupStore, notify: GroupNotify) -> None:
        self._store = store
        self._notify = notify
        # The last member list built per group. Every membership change bumps the
        # version, and after one every member asks for the list: built once, not
        # once per member (500 lists of 500 members).
        self._infos: dict[str, GroupInfo] = {}

    async def _pk(self, username: str) -> int:
        pks = await self._store.user_pks([username])
        if username not in pks:
            raise ProtocolError(ErrorCode.UNKNOWN_USER, f"no user {username[:64]!r}")
        return pks[username]

    async def _pks(self, usernames: list[str]) -> list[int]:
        pks = await self._store.user_pks(usernames)
        unknown = [u for u in usernames if u not in pks]
        if unknown:
            raise ProtocolError(
                ErrorCode.UNKNOWN_USER, f"no such user: {', '.join(u[:32] for u in unknown[:5])}"
            )
        return [pks[u] for u in usernames]

    async def require_member(self, device: DeviceHandle, group_id: str) -> str:
        """The device's role in the group, else ``not_a_member`` (also for a group
        that does not exist: a non-member cannot tell the two apart)."""
        role = await self._store.role(group_id, await self._pk(device.username))
        if role is None:
            raise ProtocolError(ErrorCode.NOT_A_MEMBER, "not a member of this group")
        return role

    async def create(self, device: DeviceHandle, req: GroupCreate) -> GroupInfo:
        others = [u for u in dict.fromkeys(req.members) if u != device.username]
        pks = await self._pks(others)
        group_id = secrets.token_urlsafe(16)
        await self._store.create(group_id, await self._pk(device.username), pks, now_ms())
        group = await self._store.get(group_id)
        assert group is not None
        await self._announce(
            [m.username for m in group.members],
            group_id,
            group.version,
            "created",
            device.username,
            [m.username for m in group.members],
        )
        return _info(group)

    async def info(self, device: DeviceHandle, req: GroupRef) -> GroupInfo:
        await self.require_member(device, req.group_id)
        known = self._infos.get(req.group_id)
        if known is not None and known.version == await self._store.version(req.group_id):
            return known
        group = await self._store.get(req.group_id)
        if group is None:
            raise ProtocolError(ErrorCode.NOT_A_MEMBER, "not a member of this group")
        info = _info(group)
        self._infos.pop(req.group_id, None)
        if len(self._infos) >= INFOS_KEPT:
            del self._infos[next(iter(self._infos))]  # the least recently built
        self._infos[req.group_id] = info
        return info

    async def list_groups(self, device: DeviceHandle) -> GroupList:
        rows = await self._store.groups_of(await self._pk(device.username))
        return GroupList(
            groups=[
                GroupSummary(group_id=g, version=v, role="admin" if r == "admin" else "member")
                for g, v, r in rows
            ]
        )

    async def add(self, device: DeviceHandle, req: GroupAdd) -> GroupInfo:
        pks = await self._pks(list(dict.fromkeys(req.usernames)))
        actor = await self._pk(device.username)
        change = await self._change(
            self._store.add(req.group_id, actor, pks, now_ms(), MAX_GROUP_MEMBERS)
        )
        await self._announce(
            change.members, req.group_id, change.version, "added", device.username, change.changed
        )
        return await self.info(device, GroupRef(group_id=req.group_id))

    async def remove(self, device: DeviceHandle, req: GroupMemberRef) -> GroupInfo:
        target = await self._pk(req.username)
        actor = await self._pk(device.username)
        change = await self._change(self._store.remove(req.group_id, actor, target))
        kind: Literal["removed", "left"] = "left" if target == actor else "removed"
        await self._announce(
            [*change.members, req.username],
            req.group_id,
            change.version,
            kind,
            device.username,
            change.changed,
        )
        if target == actor:
            return GroupInfo(
                group_id=req.group_id, version=change.version, created_at=0, members=[]
            )
        return await self.info(device, GroupRef(group_id=req.group_id))

    async def leave(self, device: DeviceHandle, req: GroupRef) -> GroupInfo:
        return await self.remove(
            device, GroupMemberRef(group_id=req.group_id, username=device.username)
        )

    async def promote(self, device: DeviceHandle, req: GroupMemberRef) -> GroupInfo:
        target = await self._pk(req.username)
        change = await self._change(
            self._store.promote(req.group_id, await self._pk(device.username), target)
        )
        await self._announce(
            change.members,
            req.group_id,
            change.version,
            "promoted",
            device.username,
            [req.username],
        )
        return await self.info(device, GroupRef(group_id=req.group_id))

    async def require_members(
        self, device: DeviceHandle, group_id: str, usernames: set[str]
    ) -> None:
        """For Olm envelopes about a group: sender and every recipient are members."""
        await self.require_member(device, group_id)
        pks = await self._store.user_pks(usernames)
        members = await self._store.member_pks(group_id, pks.values())
        outsiders = sorted(u for u in usernames if pks.get(u) not in members)
        if outsiders:
            raise ProtocolError(
                ErrorCode.NOT_A_MEMBER,
                f"not in this group: {', '.join(u[:32] for u in outsiders[:5])}",
            )

    async def device(self, device: DeviceHandle, req: GroupDeviceQuery) -> GroupDeviceInfo:
        """For a member answering a key request: since when the requester may read."""
        await self.require_member(device, req.group_id)
        return GroupDeviceInfo(
            readable_from=await self._store.readable_from(req.group_id, req.username, req.device_id)
        )

    async def member_devices(self, group_id: str) -> list[int]:
        return await self._store.member_devices(group_id)

    async def _change(self, op: Awaitable[Change]) -> Change:
        try:
            return await op
        except GroupNotFound:
            raise ProtocolError(ErrorCode.NOT_A_MEMBER, "not a member of this group") from None
        except NotAMember:
            raise ProtocolError(ErrorCode.NOT_A_MEMBER, "not a member of this group") from None
        except NotAnAdmin:
            raise ProtocolError(ErrorCode.NOT_AN_ADMIN, "only an admin can do that") from None
        except TooManyMembers:
            raise ProtocolError(
                ErrorCode.TOO_MANY_MEMBERS, f"a group has at most {MAX_GROUP_MEMBERS} members"
            ) from None

    async def _announce(
        self,
        to: Iterable[str],
        group_id: str,
        version: int,
        kind: Literal["created", "added", "removed", "left", "promoted"],
        actor: str,
        usernames: list[str],
    ) -> None:
        await self._notify(
            dict.fromkeys(to),
            GroupChange(
                group_id=group_id, version=version, kind=kind, actor=actor, usernames=usernames
            ),
        )
