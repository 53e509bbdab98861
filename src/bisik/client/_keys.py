"""Keeping this device's one-time keys (and its fallback key) published."""

from __future__ import annotations

from typing import Any

from bisik.client._setup import ONE_TIME_KEY_TARGET
from bisik.client._store import LocalStore
from bisik.client._transport import Transport
from bisik.crypto import OlmMachine


class KeyTopUp:
    def __init__(self, db: LocalStore, machine: OlmMachine, transport: Transport) -> None:
        self._db = db
        self._machine = machine
        self._transport = transport

    async def replenish(self, _: object = None) -> None:
        """Top up one-time keys to the target, and replace a fallback key that was used."""
        counts = await self._transport.call("keys_count", {})
        missing = ONE_TIME_KEY_TARGET - int(counts["one_time_keys"])
        new_fallback = counts.get("fallback_used") or not counts["fallback_key"]
        if missing <= 0 and not new_fallback:
            return
        upload: dict[str, Any] = {"one_time_keys": []}
        with self._db.transaction():
            if missing > 0:
                # Keys left unpublished by a failed upload go first; never more
                # than the server is missing (it caps what a device may store).
                fresh = missing - len(self._machine.unpublished_one_time_keys())
                if fresh > 0:
                    self._machine.generate_one_time_keys(fresh)
                upload["one_time_keys"] = self._machine.unpublished_one_time_keys()[:missing]
            if new_fallback:
                # vodozemac keeps the previous fallback key too, for messages in flight.
                upload["fallback_key"] = self._machine.generate_fallback_key()
        await self._transport.call("keys_upload", upload)
        with self._db.transaction():
            self._machine.mark_keys_as_published()
