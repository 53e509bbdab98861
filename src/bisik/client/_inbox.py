"""The inbox: everything the server pushes, and the backlog synced page by page.

Envelopes are opened in the server's order by the worker: a sync step, or an
``ENVELOPES`` step for what was pushed (or the worker's interlude, while a
step waits for the server). Runs of envelopes are opened in one local
transaction by the sync core (``Opener``); a group message that needs the
network goes through ``GroupKeys`` between runs. Acks for pushed envelopes
are coalesced; a lost ack only means the envelope comes again and is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from bisik.client._backup import Backup
from bisik.client._clock import Clock
from bisik.client._core import Inbound, Opened, Opener, Parsed, parse_envelope
from bisik.client._devices import DeviceDirectory
from bisik.client._errors import ClientError, IdentityKeyChanged, NotConnected
from bisik.client._events import EventBus
from bisik.client._group_keys import GroupKeys
from bisik.client._group_receive import GroupRejected
from bisik.client._models import (
    ConnectionChanged,
    DeviceRemoved,
    DevicesChanged,
    IdentityChanged,
    MessageReceived,
    PresenceChanged,
    Synced,
    TypingChanged,
)
from bisik.client._outbox import Outbox
from bisik.client._signals import Signals
from bisik.client._store import NOT_CONTENT_ERRORS, LocalStore
from bisik.client._transport import Transport
from bisik.client._worker import Step, Worker
from bisik.proto import ProtocolError

# Raised through: not about one message (see ``Opener.open_run``).
_NOT_CONTENT: tuple[type[Exception], ...] = (*NOT_CONTENT_ERRORS, NotConnected, ProtocolError)

log = logging.getLogger("bisik.client")

# How long delivered receipts wait to be coalesced (one per sender per burst).
RECEIPT_DELAY_S = 0.2
# How long acks for pushed envelopes wait to be coalesced: a device in a busy
# group sends one ack per burst, not one per message. An ack only lets the
# server delete what this device has stored; nothing anyone sees waits for it.
ACK_DELAY_S = 0.5
# Envelope ids per ack (the server's maximum).
ACK_MAX = 1000
# Envelopes per sync request (the server's maximum).
SYNC_PAGE = 500


class Inbox:
    def __init__(
        self,
        *,
        db: LocalStore,
        transport: Transport,
        worker: Worker,
        events: EventBus,
        devices: DeviceDirectory,
        opener: Opener,
        group_keys: GroupKeys,
        outbox: Outbox,
        signals: Signals,
        backup: Backup,
        synced: asyncio.Event,
        clock: Clock,
    ) -> None:
        self._db = db
        self._transport = transport
        self._worker = worker
        self._events = events
        self._devices = devices
        self._opener = opener
        self._group_keys = group_keys
        self._outbox = outbox
        self._signals = signals
        self._backup = backup
        self.synced = synced
        self._clock = clock
        self._pushed: list[Any] = []
        # Counts disconnects: a sync that began on an earlier connection must not
        # mark this one synced (pushes would then overtake what it did not fetch).
        self._connection = 0
        # Acks on their way to the server: the worker opens the next envelopes
        # meanwhile (an unacked envelope comes again and is skipped as processed).
        self._acks: set[asyncio.Task[None]] = set()
        # Pushed envelopes opened and stored whose ack waits ``ACK_DELAY_S``.
        self._unacked: list[int] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        self._delivered: dict[str, list[str]] = {}
        self._receipts_due = False
        worker.interlude(self._has_pushed, self.open_pushed)
        for event, handler in (
            ("connect", self._on_connect),
            ("disconnect", self._on_disconnect),
            ("envelope", self._on_envelope),
            ("envelopes", self._on_envelopes),
            ("resync", self._on_resync),
            ("keys_low", self._on_keys_low),
            ("devices_changed", self._on_devices_changed),
            ("presence", self._on_presence),
            ("device_removed", self._on_device_removed),
            ("group_changed", self._on_group_changed),
        ):
            transport.on(event, handler)

    # -- what the server pushes ----------------------------------------------------------

    async def _on_connect(self) -> None:
        self._events.emit(ConnectionChanged("connected"))
        self._worker.submit(Step.RESYNC)

    async def _on_disconnect(self, reason: Any = None) -> None:
        self._connection += 1
        self.synced.clear()
        # Pushed envelopes not yet handled will come again with the next sync,
        # in order; handling them now could show them out of order.
        self._pushed.clear()
        self._events.emit(ConnectionChanged("disconnected"))

    async def _on_envelope(self, data: Any) -> None:
        # python-socketio may run a push's handler after the disconnect handler of
        # its connection: such a push comes again with the next sync, in order.
        # Pushes that arrive while the worker is busy are opened together.
        if self._transport.connected:
            self._pushed.append(data)
            if len(self._pushed) == 1:
                self._worker.submit(Step.ENVELOPES)
            self._worker.poke()

    async def _on_envelopes(self, data: Any) -> None:
        """Several envelopes in one push (a burst from one sender), in order."""
        batch = data.get("envelopes") if isinstance(data, dict) else None
        if isinstance(batch, list):
            for envelope in batch:
                await self._on_envelope(envelope)

    async def _on_resync(self, data: Any = None) -> None:
        # The server lost pushes (its fan-out restarted): page the queue again.
        self._worker.submit(Step.RESYNC)

    async def _on_keys_low(self, data: Any = None) -> None:
        self._worker.submit(Step.REPLENISH)

    async def _on_group_changed(self, data: Any = None) -> None:
        if isinstance(data, dict) and isinstance(data.get("group_id"), str):
            self._worker.submit(Step.GROUP_CHANGED, data)

    async def _on_devices_changed(self, data: Any = None) -> None:
        username = data.get("username") if isinstance(data, dict) else None
        if isinstance(username, str):
            self._devices.forget(username)
            self._events.emit(DevicesChanged(username))

    async def _on_presence(self, data: Any = None) -> None:
        if isinstance(data, dict) and isinstance(data.get("username"), str):
            self._events.emit(
                PresenceChanged(
                    data["username"], bool(data.get("online")), data.get("last_seen_at")
                )
            )

    async def _on_device_removed(self, data: Any = None) -> None:
        log.warning("this device was removed from the account")
        with self._db.transaction():
            self._db.set_meta("revoked", "1")
        self._events.emit(DeviceRemoved())
        self._worker.spawn(self._transport.sio.disconnect())

    # -- opening (worker steps) ---------------------------------------------------------

    def _has_pushed(self) -> bool:
        return bool(self._pushed) and self.synced.is_set()

    async def open_pushed(self, _: object = None) -> None:
        pushed, self._pushed = self._pushed, []
        if self.synced.is_set() and pushed:
            await self._handle(pushed)

    async def sync(self) -> None:
        """Fetch the backlog page by page; the next page is already on its way
        while this one is decrypted and stored."""
        connection = self._connection
        total = 0
        fetch = asyncio.ensure_future(self._sync_page(0))
        try:
            while True:
                envelopes, more = await fetch
                if more and envelopes:
                    fetch = asyncio.ensure_future(self._sync_page(int(envelopes[-1]["id"])))
                    # Opening a page does not yield: the request goes out first.
                    await self._transport.flushed()
                total += await self._handle(envelopes, confirm=True)
                if not more or not envelopes:
                    break
        finally:
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(BaseException):
                    await fetch
        # Synced means the server holds nothing this device has opened.
        self.flush_acks()
        if self._acks:
            await asyncio.wait(set(self._acks))
        if connection != self._connection:
            raise NotConnected("the connection dropped during the sync")
        self.synced.set()
        self._events.emit(Synced(total))

    async def _sync_page(self, after: int) -> tuple[list[dict[str, Any]], bool]:
        page = await self._transport.call("sync", {"after": after, "limit": SYNC_PAGE})
        return list(page["envelopes"]), bool(page["more"])

    async def _handle(self, envelopes: list[Any], *, confirm: bool = False) -> int:
        """Open envelopes in order and acknowledge the ones that are done
        (``confirm``: the sync waits for the server's answer to each ack).
        Returns how many messages were received."""
        done: list[int] = []
        received = 0

        def tally(parsed: Parsed, outcome: str | None) -> None:
            nonlocal received
            if outcome is not None and not parsed.ephemeral:
                done.append(parsed.envelope_id)
                received += outcome == "received"

        try:
            checked = [await self._check(env) for env in envelopes]
            seen: set[str] = set()  # envelope keys opened in this call
            at = 0
            while at < len(checked):
                ready = checked[at]
                if not isinstance(ready, Inbound):
                    if ready is not None:
                        tally(*ready)
                    at += 1
                    continue
                end = at
                while end < len(checked) and isinstance(checked[end], Inbound):
                    end += 1
                run = [c for c in checked[at:end] if isinstance(c, Inbound)]
                opened = self._opener.open_run(run, seen)
                for item, o in zip(run, opened, strict=False):
                    tally(item.parsed, o.outcome)
                await self._after_opened(run, opened)
                at += len(opened)
                if len(opened) < len(run):  # a group message that needs the network
                    item = run[len(opened)]
                    tally(item.parsed, await self._open_group(item))
                    at += 1
        finally:
            if done and self._transport.connected:
                if confirm:
                    self._start_ack(done, confirm=True)
                else:
                    self._unacked += done
                    if len(self._unacked) >= ACK_MAX:
                        self.flush_acks()
                    elif self._ack_timer is None:
                        self._ack_timer = asyncio.get_running_loop().call_later(
                            ACK_DELAY_S, self.flush_acks
                        )
            self._schedule_delivered_receipts()
        return received

    async def _check(self, env: Any) -> Inbound | tuple[Parsed, str | None] | None:
        """Parse an envelope and find its sender's verified device: ready to
        open, or its outcome (``None`` leaves it on the server for later, e.g.
        the sender's keys are unreachable)."""
        parsed = parse_envelope(env)
        if parsed is None:
            log.warning("dropping a malformed envelope from the server")
            return None
        if not parsed.ephemeral and self._db.is_processed(parsed.key):
            return parsed, "duplicate"
        try:
            device = await self._devices.verified_device(parsed.sender, parsed.sender_device)
        except NotConnected:
            return parsed, None
        except IdentityKeyChanged as exc:
            # Held on the server (not acked) until the user accepts the new key.
            self._events.emit(IdentityChanged(exc.username, exc.old, exc.new))
            return parsed, None
        except (ProtocolError, ClientError) as exc:
            self._events.emit(self._opener.reject(parsed, f"unknown sender: {exc}"))
            return parsed, "rejected"
        if device is None:
            reason = "sender device is not signed by its owner"
            self._events.emit(self._opener.reject(parsed, reason))
            return parsed, "rejected"
        return Inbound(parsed, device)

    async def _open_group(self, item: Inbound) -> str:
        parsed = item.parsed
        try:
            return await self._group_keys.open_envelope(parsed.env, parsed.key, item.device)
        except GroupRejected as exc:
            self._events.emit(self._opener.reject(parsed, str(exc)))
            return "rejected"
        except _NOT_CONTENT:
            raise
        except Exception as exc:
            # Content no check foresaw: refused alone (see ``Opener.open_run``).
            log.exception("a group message failed to open")
            refused = self._opener.refuse(parsed, exc)
            if refused.failed is not None:
                self._events.emit(refused.failed)
            return refused.outcome

    async def _after_opened(self, run: list[Inbound], opened: list[Opened]) -> None:
        """Tell the app what a committed run did, and act on it."""
        for item, o in zip(run, opened, strict=False):
            if o.failed is not None:
                self._events.emit(o.failed)
            if o.room_key is not None:
                await self._group_keys.retry_waiting(o.room_key)
            if o.key_request is not None:
                self._worker.submit(Step.KEY_REQUEST_IN, o.key_request)
            for event in o.events:
                if isinstance(event, TypingChanged):
                    self._signals.typing_event(event)
                else:
                    self._events.emit(event)
            if o.message is not None:
                self._backup.changed()
                if o.message.direction == "in":
                    self._delivered.setdefault(item.parsed.sender, []).append(o.message.id)
                self._events.emit(MessageReceived(o.message))

    # -- acks and delivered receipts ------------------------------------------------------

    def flush_acks(self) -> None:
        """Send the acks that wait to be coalesced (dropped if disconnected: the
        server sends those envelopes again, and they are skipped as processed)."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        ids, self._unacked = self._unacked, []
        if self._transport.connected:
            for start in range(0, len(ids), ACK_MAX):
                self._start_ack(ids[start : start + ACK_MAX], confirm=False)

    def _start_ack(self, ids: list[int], *, confirm: bool) -> None:
        ack = asyncio.get_running_loop().create_task(self._ack(ids, confirm))
        self._acks.add(ack)
        ack.add_done_callback(self._acks.discard)

    async def _ack(self, ids: list[int], confirm: bool) -> None:
        with contextlib.suppress(NotConnected, ProtocolError):
            if confirm:
                await self._transport.call("ack", {"ids": ids})
            else:
                await self._transport.tell("ack", {"ids": ids})

    def _schedule_delivered_receipts(self) -> None:
        """Delivered receipts wait ``RECEIPT_DELAY_S``, so a burst of messages is
        answered by one receipt per sender instead of one per message."""
        if self._delivered and not self._receipts_due:
            self._receipts_due = True
            self._worker.submit_later(RECEIPT_DELAY_S, Step.RECEIPTS)

    async def receipts_step(self, _: object = None) -> None:
        self._receipts_due = False
        self.queue_delivered_receipts()

    def queue_delivered_receipts(self) -> bool:
        """Tell each sender their messages reached this device; ``False`` if
        there were none to tell."""
        pending, self._delivered = self._delivered, {}
        for sender, ids in pending.items():
            self._outbox.queue_receipt(sender, "peer", "delivered", ids)
        return bool(pending)

    async def close(self) -> None:
        """Send the coalesced acks and wait for those on their way."""
        self.flush_acks()
        if self._acks:
            await asyncio.wait(set(self._acks), timeout=5)
