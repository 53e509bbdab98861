"""What this device shares and is shown of others: typing, presence, read
receipts (settings reciprocal, as in Signal) and Web Push registration."""

from __future__ import annotations

from typing import Any

from bisik.client._models import PresenceChanged
from bisik.client._signals import Signals
from bisik.client._transport import Transport
from bisik.client._worker import Step, Worker


class Sharing:
    def __init__(self, signals: Signals, transport: Transport, worker: Worker) -> None:
        self._signals = signals
        self._transport = transport
        self._worker = worker

    def set_typing(self, peer: str, typing: bool) -> None:
        """Say we started or stopped typing to ``peer`` (throttled, end-to-end encrypted)."""
        if self._signals.should_send_typing(peer, typing):
            self._worker.submit(Step.TYPING, (peer, typing))

    async def presence(self, username: str) -> PresenceChanged | None:
        """``username``'s online state and last seen, or ``None`` if hidden (by them
        or because we hide ours). Raises ``ProtocolError`` (``not_in_conversation``)."""
        info = await self._transport.call("presence", {"username": username})
        if not info["visible"]:
            return None
        return PresenceChanged(username, bool(info["online"]), info.get("last_seen_at"))

    async def settings(self) -> dict[str, bool]:
        server = await self._transport.call("settings", {})
        return {
            "presence": bool(server["share_presence"]),
            "typing": self._signals.enabled("typing"),
            "read_receipts": self._signals.enabled("read_receipts"),
        }

    async def update_settings(
        self,
        *,
        presence: bool | None = None,
        typing: bool | None = None,
        read_receipts: bool | None = None,
    ) -> dict[str, bool]:
        """Change what we share; each is reciprocal (off: we see nobody's either)."""
        if presence is not None:
            await self._transport.call("settings", {"share_presence": presence})
        if typing is not None:
            self._signals.set_enabled("typing", typing)
        if read_receipts is not None:
            self._signals.set_enabled("read_receipts", read_receipts)
        return await self.settings()

    async def register_push(self, subscription: dict[str, Any]) -> None:
        """Register a Web Push subscription (``{endpoint, keys: {p256dh, auth}}``)."""
        await self._transport.call("push_subscribe", subscription)

    async def push_public_key(self) -> str:
        """The server's VAPID public key (the browser's ``applicationServerKey``)."""
        return str((await self._transport.call("push_key", {}))["public_key"])
