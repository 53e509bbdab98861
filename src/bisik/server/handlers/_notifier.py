from __future__ import annotations

from typing import Protocol

from bisik.proto import Envelope


class Notifier(Protocol):
    """How handlers reach connected devices; the realtime layer implements it."""

    async def deliver(self, device_pk: int, envelope: Envelope) -> None: ...

    async def keys_low(self, device_pk: int, count: int) -> None: ...


class NullNotifier:
    async def deliver(self, device_pk: int, envelope: Envelope) -> None:
        return None

    async def keys_low(self, device_pk: int, count: int) -> None:
        return None
