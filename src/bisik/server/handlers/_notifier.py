from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from bisik.proto import Envelope, GroupChange, PresenceInfo


class Notifier(Protocol):
    """How handlers reach connected devices; the realtime layer implements it."""

    async def deliver(self, device_pk: int, envelope: Envelope) -> None: ...

    async def deliver_many(self, device_pk: int, envelopes: list[Envelope]) -> None:
        """Several envelopes for one device, in order, in one push."""
        ...

    async def deliver_copies(self, copies: list[tuple[int, int]], envelope: Envelope) -> None:
        """The same envelope to many devices, each copy with its own envelope id,
        as ``(device_pk, envelope_id)`` (a group message; ``envelope.id`` is
        not used)."""
        ...

    async def keys_low(self, device_pk: int, count: int) -> None: ...

    async def devices_changed(self, username: str) -> None:
        """The user's device list changed: tell whoever watches it."""
        ...

    async def device_removed(self, device_pk: int) -> None:
        """A device was revoked: tell it, and drop its connections."""
        ...

    async def presence(self, username: str, info: PresenceInfo) -> None:
        """Tell ``username``'s own devices about a partner's presence."""
        ...

    async def group_changed(self, usernames: Iterable[str], change: GroupChange) -> None:
        """Tell these users' own devices that a group of theirs changed."""
        ...
