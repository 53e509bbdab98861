from __future__ import annotations

from bisik.proto import ErrorCode, PresenceInfo, ProtocolError, Settings
from bisik.server._clock import now_ms
from bisik.server.handlers._notifier import Notifier
from bisik.server.stores import DeviceHandle
from bisik.server.stores.presence import Announcement, PresenceStore

DAY_MS = 86_400_000
# Sides remembered as recorded today before the memory starts over.
MAX_REMEMBERED = 100_000


class PresenceHandler:
    """Online state and last seen, shown only to conversation partners.

    Sharing is reciprocal: a user who hides their presence sees nobody's.
    """

    def __init__(self, store: PresenceStore, notifier: Notifier) -> None:
        self._store = store
        self._notifier = notifier
        self._user_pks: dict[str, int] = {}
        # (sender, recipient) -> the day that side of the pair was last recorded:
        # most messages go between known partners, and the send path should touch
        # the database for them once a day at most.
        self._recorded: dict[tuple[int, int], int] = {}

    async def user_pk(self, username: str) -> int | None:
        pk = self._user_pks.get(username)
        if pk is None:
            pk = await self._store.user_pk(username)
            if pk is not None:
                self._user_pks[username] = pk
        return pk

    async def connected(self, device: DeviceHandle) -> None:
        await self._announce(await self._store.socket_changed(device.pk, +1, now_ms()))

    async def disconnected(self, device: DeviceHandle) -> None:
        await self._announce(await self._store.socket_changed(device.pk, -1, now_ms()))

    async def _announce(self, announcement: Announcement | None) -> None:
        if announcement is None:
            return
        info = PresenceInfo(
            username=announcement.username,
            visible=True,
            online=announcement.online,
            last_seen_at=announcement.last_seen_at,
        )
        for partner in announcement.partners:
            await self._notifier.presence(partner, info)

    async def require_conversation(self, device: DeviceHandle, usernames: set[str]) -> None:
        """Raise ``not_in_conversation`` unless the device's user shares a
        conversation with every one of ``usernames`` (or is them)."""
        me = await self.user_pk(device.username)
        others = {u for u in usernames if u != device.username}
        pks = {u: await self.user_pk(u) for u in others}
        known = await self._store.share_conversation(me or -1, {p for p in pks.values() if p})
        strangers = sorted(u for u, pk in pks.items() if pk is None or pk not in known)
        if strangers:
            raise ProtocolError(
                ErrorCode.NOT_IN_CONVERSATION,
                f"no conversation with {', '.join(s[:32] for s in strangers[:5])}",
            )

    async def record_conversations(self, sender: str, recipients: set[str]) -> None:
        """A stored message went from ``sender`` to ``recipients``: record the
        sender's side of each pair. A pair counts (presence, typing) once both
        sides are recorded, so writing to someone alone never makes them a partner."""
        me = await self.user_pk(sender)
        if me is None:
            return
        today = now_ms() // DAY_MS * DAY_MS
        fresh = []
        for other in recipients - {sender}:
            pk = await self.user_pk(other)
            if pk is not None and self._recorded.get((me, pk)) != today:
                fresh.append(pk)
        if fresh:
            await self._store.record_sends(me, fresh, today)
            if len(self._recorded) > MAX_REMEMBERED:
                self._recorded.clear()
            self._recorded.update(((me, pk), today) for pk in fresh)

    async def expire_pairs(self, ttl_s: int) -> int:
        """Forget the pairs no message passed in for ``ttl_s``; how many."""
        # Sides remembered as recorded today are in pairs used today: never these.
        return await self._store.expire_pairs(now_ms() - ttl_s * 1000)

    async def query(self, device: DeviceHandle, username: str) -> PresenceInfo:
        await self.require_conversation(device, {username})
        me = await self.user_pk(device.username)
        target = await self.user_pk(username)
        assert me is not None and target is not None
        state = await self._store.presence(target)
        if not state.share_presence or not await self._store.share_presence(me):
            return PresenceInfo(username=username, visible=False)
        return PresenceInfo(
            username=username, visible=True, online=state.online, last_seen_at=state.last_seen_at
        )

    async def settings(self, device: DeviceHandle, req: Settings) -> Settings:
        me = await self.user_pk(device.username)
        assert me is not None
        if req.share_presence is not None:
            before = await self._store.share_presence(me)
            await self._store.set_share_presence(me, req.share_presence)
            if before and not req.share_presence:
                hidden = PresenceInfo(username=device.username, visible=False)
                for partner in await self._store.partners(me):
                    await self._notifier.presence(partner, hidden)
            elif req.share_presence and not before:
                await self._announce(await self._store.announcement(me))
        return Settings(share_presence=await self._store.share_presence(me))
