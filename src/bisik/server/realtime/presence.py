"""Connection presence: which devices are online here, and their last-seen time.

Only the device's own record is updated; sharing presence with contacts (with
membership checks and the user's privacy setting) builds on this.
"""

from __future__ import annotations

from collections import Counter

from bisik.server._clock import now_ms
from bisik.server.realtime._base import ConcernBase, EventHandler
from bisik.server.stores import DeviceRow


class PresenceConcern(ConcernBase):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._online: Counter[int] = Counter()

    def events(self) -> dict[str, EventHandler]:
        return {}

    def is_online(self, device_pk: int) -> bool:
        return self._online[device_pk] > 0

    async def on_connected(self, sid: str, device: DeviceRow) -> None:
        self._online[device.pk] += 1
        await self.services.account_store.touch_device(device.pk, now_ms())

    async def on_disconnected(self, sid: str, device: DeviceRow) -> None:
        self._online[device.pk] -= 1
        if self._online[device.pk] <= 0:
            del self._online[device.pk]
        await self.services.account_store.touch_device(device.pk, now_ms())
