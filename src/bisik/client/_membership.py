"""Group membership as this device knows it: looked up by name or id, fetched
from the server after every connect and every ``group_changed`` push."""

from __future__ import annotations

from typing import Any

from bisik.client._clock import Clock
from bisik.client._devices import DeviceDirectory
from bisik.client._errors import ClientError
from bisik.client._events import EventBus
from bisik.client._group_store import GroupStore, LocalGroup, Member
from bisik.client._models import GroupChanged, direct_conversation, group_conversation
from bisik.client._store import LocalStore
from bisik.client._transport import Transport
from bisik.proto import ErrorCode, ProtocolError


class Membership:
    def __init__(
        self,
        *,
        db: LocalStore,
        groups: GroupStore,
        username: str,
        transport: Transport,
        devices: DeviceDirectory,
        events: EventBus,
        clock: Clock,
    ) -> None:
        self._db = db
        self.groups = groups
        self._username = username
        self._transport = transport
        self._devices = devices
        self._events = events
        self._clock = clock
        # Groups whose member list a refused key share showed to be out of date.
        self.stale: set[str] = set()

    def all(self) -> list[LocalGroup]:
        return self.groups.groups()

    def group(self, ref: str) -> LocalGroup:
        """A group by ``#name``, ``#id``, name or id (``ClientError`` if unknown or ambiguous)."""
        key = ref[1:] if ref.startswith("#") else ref
        found = self.groups.group(key)
        if found is not None:
            return found
        named = [g for g in self.groups.groups() if g.name == key]
        if len(named) == 1:
            return named[0]
        if named:
            raise ClientError(f"{len(named)} groups are called {key!r}: use the group id")
        raise ClientError(f"no group {ref!r}")

    def conversation_id(self, peer: str) -> str:
        """The conversation id (``@user`` or ``#group_id``) of a user or ``#group``."""
        if peer.startswith("#"):
            return group_conversation(self.group(peer).group_id)
        return direct_conversation(peer)

    def route(self, ref: str) -> tuple[str, dict[str, Any]]:
        """Where a message to group ``ref`` goes: its conversation and outbox route."""
        group = self.group(ref)
        if not group.active:
            raise ClientError("you are no longer a member of this group")
        return group_conversation(group.group_id), {"group": group.group_id, "type": "text"}

    def save_info(self, info: dict[str, Any]) -> None:
        """Store a member list from the server (inside the caller's transaction)."""
        members = [
            Member(str(m["username"]), str(m["role"]), int(m["added_at"])) for m in info["members"]
        ]
        active = any(m.username == self._username for m in members)
        self.groups.save_membership(
            str(info["group_id"]), int(info["version"]), members, active, self._clock()
        )

    def left(self, group_id: str, version: int) -> None:
        """We are out of a group: no members, and no session to send with."""
        with self._db.transaction():
            self.groups.save_membership(group_id, version, [], False, self._clock())
            self.groups.drop_outbound(group_id)

    async def refresh(self, group_id: str) -> LocalGroup | None:
        """Fetch the member list; a group we are no longer in becomes inactive."""
        try:
            info = await self._transport.call("group_info", {"group_id": group_id})
        except ProtocolError as exc:
            if exc.code != ErrorCode.NOT_A_MEMBER:
                raise
            known = self.groups.group(group_id)
            self.left(group_id, known.version if known else 0)
            return self.groups.group(group_id)
        with self._db.transaction():
            self.save_info(info)
        self.stale.discard(group_id)
        await self._devices.watch([str(m["username"]) for m in info["members"]])
        return self.groups.group(group_id)

    async def sync(self) -> None:
        """After a (re)connect: catch up with membership changes we missed."""
        listed = (await self._transport.call("group_list", {}))["groups"]
        versions = {str(g["group_id"]): int(g["version"]) for g in listed}
        for group in self.groups.groups():
            if group.group_id not in versions:
                await self.refresh(group.group_id)
        for group_id, version in versions.items():
            known = self.groups.group(group_id)
            if known is None or known.version != version or not known.active:
                await self.refresh(group_id)

    async def changed(self, data: dict[str, Any]) -> None:
        """A ``group_changed`` push (a worker step: in order with envelopes)."""
        group_id = str(data["group_id"])
        kind = str(data.get("kind", ""))
        usernames = [str(u) for u in data.get("usernames", []) if isinstance(u, str)]
        if kind in ("removed", "left"):
            # Whoever left must not read what comes next: a new session.
            with self._db.transaction():
                self.groups.drop_outbound(group_id)
        await self.refresh(group_id)
        self._events.emit(GroupChanged(group_id, kind, str(data.get("actor", "")), usernames))
