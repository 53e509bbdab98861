"""Typing indicators and receipts: small end-to-end encrypted control messages.

Receipts travel as ordinary (stored, queued) envelopes, so the server cannot
tell them from text; typing travels as ephemeral envelopes that the server
pushes to online devices only. Settings are reciprocal, as in Signal: who
does not send read receipts (or typing) does not see them either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bisik.client._clock import Clock
from bisik.client._models import (
    Event,
    MessagesRead,
    Plaintext,
    ReceiptUpdated,
    TypingChanged,
)
from bisik.client._store import LocalStore
from bisik.client._timeline_store import TimelineStore

# A sender refreshes "typing" at most this often; a receiver drops it this long
# after the last refresh.
TYPING_THROTTLE_S = 3.0
TYPING_TIMEOUT_S = 6.0


class Signals:
    def __init__(
        self, store: LocalStore, username: str, emit: Callable[[Event], None], clock: Clock
    ) -> None:
        self._store = store
        self._rows = TimelineStore(store)
        self._clock = clock
        self._username = username
        self._emit = emit
        self._last_start: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.typing_timeout_s = TYPING_TIMEOUT_S

    # -- settings (local; reciprocal) --------------------------------------------

    def enabled(self, name: str) -> bool:
        return self._store.get_meta(f"setting:{name}") != "0"

    def set_enabled(self, name: str, on: bool) -> None:
        with self._store.transaction():
            self._store.set_meta(f"setting:{name}", "1" if on else "0")

    # -- typing, sending side ---------------------------------------------------------

    def should_send_typing(self, peer: str, typing: bool) -> bool:
        """Throttle: one start per few seconds, and a stop only after a start."""
        if not self.enabled("typing"):
            return False
        now = time.monotonic()
        if typing:
            if now - self._last_start.get(peer, -1e9) < TYPING_THROTTLE_S:
                return False
            self._last_start[peer] = now
            return True
        return self._last_start.pop(peer, None) is not None

    # -- receiving ------------------------------------------------------------------

    def apply(self, content: Plaintext, sender: str, sender_device: str) -> list[Event]:
        """Apply a control message (inside the caller's store transaction).

        Returns the events to emit once the transaction has committed.
        """
        if content.type == "typing":
            if sender != self._username and self.enabled("typing"):
                return [TypingChanged(sender, bool(content.typing))]
            return []
        receipt = content.receipt
        if content.type != "receipt" or receipt is None:
            return []
        if sender == self._username:
            # Another of our devices read these: unread counts agree everywhere.
            marked = self._rows.mark_read(receipt.conversation, receipt.ids, self._clock())
            return [MessagesRead(receipt.conversation, marked)] if marked else []
        if receipt.kind == "read" and not self.enabled("read_receipts"):
            return []
        ours = self._rows.add_receipt(
            receipt.ids, sender, sender_device, receipt.kind, self._clock()
        )
        return [ReceiptUpdated(sender, sender_device, receipt.kind, ours)] if ours else []

    def typing_event(self, event: TypingChanged) -> None:
        """Emit a typing change; a start expires by itself without a refresh."""
        timer = self._timers.pop(event.username, None)
        if timer is not None:
            timer.cancel()
        if event.typing:
            loop = asyncio.get_running_loop()
            self._timers[event.username] = loop.call_later(
                self.typing_timeout_s, self._expire, event.username
            )
        self._emit(event)

    def _expire(self, username: str) -> None:
        self._timers.pop(username, None)
        self._emit(TypingChanged(username, False))

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
