"""The outbox: what this device has to send, kept in the local database until
the server has stored it, sent in order.

Runs of direct messages go several to a frame (``send_many``), group messages
one by one (``GroupSender``). A refusal for now (rate, storage) keeps the item
first in line and retries soon; an ``unknown_device`` encrypts it again once
after fetching the device lists; any other refusal marks it failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from bisik.client._backup import Backup
from bisik.client._clock import Clock
from bisik.client._core import Encryptor, target_users
from bisik.client._devices import DeviceDirectory
from bisik.client._errors import ClientError, NotConnected
from bisik.client._events import EventBus
from bisik.client._group_send import GroupSender
from bisik.client._membership import Membership
from bisik.client._models import (
    DeviceStamp,
    Message,
    MessageFailed,
    MessageSent,
    direct_conversation,
    new_message_id,
)
from bisik.client._store import LocalStore, OutboxItem, StoredDevice
from bisik.client._timeline import Timeline
from bisik.client._transport import Transport
from bisik.client._worker import Step, Worker
from bisik.crypto import OlmMachine
from bisik.proto import ErrorCode, ProtocolError, validate_username

log = logging.getLogger("bisik.client")

# Outbox items per send_many frame, and the ciphertext bytes in one (well under
# the server's 1 MiB frame limit).
SEND_BATCH = 64
SEND_BATCH_BYTES = 256 * 1024
# Seconds before a send the server refused for now (rate, storage) is tried again.
RATE_LIMIT_RETRY_S = 1.0
# Long enough for any chat message, small enough that one send to many devices
# stays far below the server's frame limit (longer text belongs in an attachment).
MAX_TEXT_BYTES = 16 * 1024
# Receipts per control message.
RECEIPT_IDS = 500


class _NotSent:
    """An outbox item left for the next round (something before it was refused)."""


_NOT_SENT = _NotSent()

# What sending one outbox item came to: the server's result, nothing to send,
# why it was refused, or not sent this time.
_Outcome = dict[str, Any] | ClientError | ProtocolError | _NotSent | None


class Outbox:
    def __init__(
        self,
        *,
        db: LocalStore,
        machine: OlmMachine,
        me: DeviceStamp,
        transport: Transport,
        worker: Worker,
        events: EventBus,
        timeline: Timeline,
        devices: DeviceDirectory,
        encryptor: Encryptor,
        groups: GroupSender,
        membership: Membership,
        backup: Backup,
        synced: asyncio.Event,
        clock: Clock,
    ) -> None:
        self._db = db
        self._machine = machine
        self._me = me
        self._transport = transport
        self._worker = worker
        self._events = events
        self._timeline = timeline
        self._devices = devices
        self._encryptor = encryptor
        self._groups = groups
        self._membership = membership
        self._backup = backup
        self._synced = synced
        self._clock = clock
        self._sent_waiters: dict[str, asyncio.Future[Message]] = {}
        # Set while the server refuses sends for now (rate, storage): one retry waits.
        self._send_retry: asyncio.TimerHandle | None = None
        # Outbox items encrypted again after an ``unknown_device`` (once each).
        self._reencrypted: set[str] = set()
        # Set whenever an item leaves the outbox (``drain``).
        self._settled = asyncio.Event()

    # -- queueing -----------------------------------------------------------------------

    async def send_text(self, peer: str, text: str, *, reply_to: str | None = None) -> Message:
        """Queue a text message to ``peer`` (a user, or a group as ``#name`` or
        ``#id``) and start sending it: stored at once as ``pending``, sent when
        there is a connection (``wait_sent`` waits for the server's ack).
        ``reply_to`` quotes a message by id; the conversation's timer applies.

        Raises:
            ProtocolError: ``unknown_user`` if connected and ``peer`` does not exist.
            IdentityKeyChanged: the peer's identity key changed and was not acknowledged.
        """
        if not peer.startswith("#"):
            validate_username(peer)
        if not text:
            raise ClientError("cannot send an empty message")
        if len(text.encode()) > MAX_TEXT_BYTES:
            raise ClientError(f"message too long ({MAX_TEXT_BYTES:,} bytes of UTF-8 at most)")
        extras = self._timeline.outgoing_extras(self._membership.conversation_id(peer), reply_to)
        if peer.startswith("#"):
            conversation, route = self._membership.route(peer)
            return self.queue_message(conversation, text, route, extras)
        if self._transport.connected:
            # Unreachable after all (the server just went away): queued, and
            # checked when it is encrypted, as when offline.
            with contextlib.suppress(NotConnected):
                await self._devices.recipient_devices(peer, refresh=False)
        return self.queue_message(direct_conversation(peer), text, {"to": peer}, extras)

    def queue_message(
        self, conversation: str, text: str, route: dict[str, Any], extras: dict[str, Any]
    ) -> Message:
        """Store an outgoing text message (``pending``) and queue it; ``route``
        says where it goes (``{"to": peer}`` or a group's)."""
        now = self._clock()
        message = Message(
            id=new_message_id(),
            conversation=conversation,
            sender=self._me.username,
            sender_device=self._me.device_id,
            direction="out",
            body=text,
            sent_at=now,
            received_at=now,
            server_seq=None,
            state="pending",
        )
        payload = {**route, "body": text, "sent_at": now, **extras}
        with self._db.transaction():
            self._timeline.rows.insert_message(message)
            self._timeline.record_extras(
                message,
                reply_to=extras.get("reply_to"),
                expires_in=extras.get("expires_in"),
                view_once=bool(extras.get("view_once")),
            )
            envelopes = None
            if (targets := self._ready_targets(payload)) is not None:
                # Next in line and nothing to fetch: encrypted in this same
                # commit, where the outbox would take a commit of its own.
                with self._machine.saving_once():
                    envelopes = self._encryptor.content(message.id, payload, targets)
            self._db.add_outbox(message.id, conversation, payload, now, envelopes)
        self._sent_waiters.setdefault(message.id, asyncio.get_running_loop().create_future())
        self._worker.submit(Step.FLUSH)
        if not any(extras.get(k) for k in ("reply_to", "expires_in", "view_once")):
            return message  # nothing recorded with it, and no one has reacted to it yet
        return self._timeline.with_extras([message])[0]

    def queue(
        self, conversation: str, payload: dict[str, Any], message_id: str | None = None
    ) -> str:
        """Queue a control payload (an action, a receipt, a group's name) for
        ``conversation``; returns its id."""
        message_id = message_id or new_message_id()
        now = self._clock()
        with self._db.transaction():
            self._db.add_outbox(message_id, conversation, {"sent_at": now, **payload}, now)
        self._worker.submit(Step.FLUSH)
        return message_id

    def queue_receipt(self, peer: str, scope: str, kind: str, ids: list[str]) -> None:
        """Receipts through the outbox (durable, retried like a message)."""
        conversation = direct_conversation(peer)
        for start in range(0, len(ids), RECEIPT_IDS):
            receipt = {"kind": kind, "ids": ids[start : start + RECEIPT_IDS]}
            self.queue(
                conversation,
                {
                    "to": peer,
                    "type": "receipt",
                    "scope": scope,
                    "receipt": {**receipt, "conversation": conversation},
                },
            )

    # -- waiting --------------------------------------------------------------------------

    def pending_count(self) -> int:
        return self._db.outbox_count()

    async def wait_sent(self, message_id: str, timeout: float) -> Message:
        """Wait until the server has stored the message; ``TimeoutError`` otherwise."""
        found = self._timeline.message(self._me.username, message_id)
        if found is not None and found.state in ("sent", "failed"):
            return found
        future = self._sent_waiters.setdefault(
            message_id, asyncio.get_running_loop().create_future()
        )
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued item has been sent (or refused); ``False``
        if some are still queued after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending_count():
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._settled.clear()
            # An expired message leaves the outbox without telling: look again
            # at least every second.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), min(left, 1.0))
        return True

    def close(self) -> None:
        if self._send_retry is not None:
            self._send_retry.cancel()
            self._send_retry = None

    def _retry(self) -> None:
        self._send_retry = None
        self._worker.submit(Step.FLUSH)

    # -- flushing (a worker step) ------------------------------------------------------------

    async def flush(self, _: object = None) -> None:
        """Send the outbox in order: runs of direct messages several to a frame
        (``send_many``), group messages one by one."""
        if not self._synced.is_set() or self._send_retry is not None:
            return
        # Each round takes the head of the outbox again: what a round did not
        # send (after a refusal) stays first in line.
        while items := self._db.outbox(SEND_BATCH):
            run = [items.pop(0)]
            if "group" not in run[0].payload:
                size = _send_size(run[0])
                while items and "group" not in items[0].payload:
                    size += _send_size(items[0])
                    if size > SEND_BATCH_BYTES:
                        break
                    run.append(items.pop(0))
            if not await self._send_run(run):
                return

    async def _send_run(self, run: list[OutboxItem]) -> bool:
        """Send some outbox items and settle each; ``False`` to stop flushing
        (tried again later, in order)."""
        outcomes: list[_Outcome]
        try:
            if "group" in run[0].payload:
                one = run[0]
                outcomes = [await self._groups.send(one.message_id, one.payload, one.envelopes)]
            else:
                outcomes = await self._send_olm_items(run)
        except NotConnected:
            raise
        except (ProtocolError, ClientError) as exc:  # the whole frame refused
            outcomes = [exc] * len(run)
        go_on = True
        sent: list[tuple[OutboxItem, dict[str, Any]]] = []
        for item, outcome in zip(run, outcomes, strict=True):
            if isinstance(outcome, _NotSent):
                break  # this and the rest: next round, in order
            if isinstance(outcome, ProtocolError | ClientError):
                go_on = self._refused(item, outcome) and go_on
            elif outcome is None:  # e.g. read sync with no other device of ours
                with self._db.transaction():
                    self._db.remove_outbox(item.message_id)
                self._settled.set()
            else:
                sent.append((item, outcome))
        self._mark_sent(sent)
        return go_on

    def _refused(self, item: OutboxItem, exc: ProtocolError | ClientError) -> bool:
        """Settle an item the server (or encryption) refused; ``False`` if it
        stays queued and flushing must wait."""
        code = exc.code if isinstance(exc, ProtocolError) else None
        if code in (ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL):
            # Over the server's message rate, its storage failing (disk full,
            # database locked) or a server bug: kept, in order, and tried again
            # soon (the server may have stored it; the same id is safe to resend).
            log.info("send refused for now (%s); retrying", code)
            if self._send_retry is None:
                self._send_retry = asyncio.get_running_loop().call_later(
                    RATE_LIMIT_RETRY_S, self._retry
                )
            return False
        if (
            code == ErrorCode.UNKNOWN_DEVICE
            and "to" in item.payload
            and item.message_id not in self._reencrypted
        ):
            # A device it was encrypted for is gone: the list changed since we
            # fetched it (no devices_changed told us in time, or the envelopes
            # were made before). Fetch the lists again and encrypt again, once.
            self._reencrypted.add(item.message_id)
            with self._db.transaction():
                self._db.set_outbox_envelopes(item.message_id, None)
            self._devices.forget(item.payload["to"])
            self._devices.forget(self._me.username)
            self._worker.submit(Step.FLUSH)
            return False
        self._reencrypted.discard(item.message_id)
        self._fail(item.message_id, str(exc))
        return True

    def _mark_sent(self, sent: list[tuple[OutboxItem, dict[str, Any]]]) -> None:
        if not sent:
            return
        stored: list[Message | None] = []
        with self._db.transaction():
            for item, result in sent:
                stored.append(
                    self._timeline.rows.mark_sent(
                        self._me.username, item.message_id, int(result["seq"]), int(result["ts"])
                    )
                )
                self._db.remove_outbox(item.message_id)
                self._reencrypted.discard(item.message_id)
        self._settled.set()
        self._backup.changed()
        shown = iter(self._timeline.with_extras([m for m in stored if m is not None]))
        for (item, _), found in zip(sent, stored, strict=True):
            if found is None:
                continue
            message = next(shown)
            self._events.emit(MessageSent(message))
            self._settle_waiter(item.message_id, message)

    def _fail(self, message_id: str, reason: str) -> None:
        with self._db.transaction():
            self._timeline.rows.mark_failed(self._me.username, message_id)
            self._db.remove_outbox(message_id)
        self._settled.set()
        self._events.emit(MessageFailed(message_id, reason))
        found = self._timeline.message(self._me.username, message_id)
        if found is not None:
            self._settle_waiter(message_id, found)

    def _settle_waiter(self, message_id: str, message: Message) -> None:
        future = self._sent_waiters.pop(message_id, None)
        if future is not None and not future.done():
            future.set_result(message)

    async def _send_olm_items(self, run: list[OutboxItem]) -> list[_Outcome]:
        """Encrypt what is not encrypted yet (all in one local transaction) and
        send: one item as ``send``, several as ``send_many``."""
        outcomes: list[_Outcome] = [None] * len(run)
        targets: dict[int, list[StoredDevice]] = {}
        by_route: dict[tuple[str, str], list[StoredDevice]] = {}  # a run is mostly one chat
        for i, item in enumerate(run):
            if item.envelopes is None:
                route = (str(item.payload["to"]), str(item.payload.get("scope", "all")))
                try:
                    if route not in by_route:
                        by_route[route] = await self.encryption_targets(item.payload)
                    targets[i] = by_route[route]
                except NotConnected:
                    raise
                except (ProtocolError, ClientError) as exc:
                    # Nothing after it goes out before it: order is kept.
                    outcomes[i : len(run)] = [exc] + [_NOT_SENT] * (len(run) - i - 1)
                    run = run[:i]
                    break
        envelopes = {i: item.envelopes for i, item in enumerate(run) if item.envelopes is not None}
        if targets:
            with self._db.transaction(), self._machine.saving_once():
                for i, devices in targets.items():
                    envelopes[i] = self._encryptor.content(
                        run[i].message_id, run[i].payload, devices
                    )
                    if envelopes[i]:
                        self._db.set_outbox_envelopes(run[i].message_id, envelopes[i])
        requests = [
            (i, {"client_message_id": run[i].message_id, "envelopes": envs, **_ttl(run[i].payload)})
            for i, envs in sorted(envelopes.items())
            if envs
        ]
        if len(requests) == 1:
            i, request = requests[0]
            try:
                outcomes[i] = await self._worker.waiting(self._transport.call("send", request))
            except ProtocolError as exc:
                outcomes[i] = exc
        elif requests:
            answer = await self._worker.waiting(
                self._transport.call("send_many", {"messages": [r for _, r in requests]})
            )
            results = answer.get("results")
            if not isinstance(results, list) or len(results) != len(requests):
                raise ProtocolError(ErrorCode.INTERNAL, "unexpected answer to send_many")
            for (i, _), result in zip(requests, results, strict=True):
                if isinstance(result, dict) and result.get("ok") is True:
                    outcomes[i] = result
                    continue
                refused = ProtocolError.from_body(result)
                outcomes[i] = _NOT_SENT if refused.code == ErrorCode.NOT_SENT else refused
        return outcomes

    # -- encryption -----------------------------------------------------------------------------

    async def encryption_targets(self, payload: dict[str, Any]) -> list[StoredDevice]:
        """The devices a payload goes to (see ``target_users``), with an Olm
        session with each."""
        peer = str(payload["to"])
        scope = payload.get("scope", "all")
        lists = {
            user: await self._devices.recipient_devices(user, refresh=True)
            for user in target_users(peer, scope, self._me.username)
        }
        targets = self._encryptor.targets_among(peer, scope, lists)
        if targets:
            await self._devices.ensure_sessions(self._machine, targets)
        return targets

    async def encrypt_for(self, message_id: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """One Olm envelope per target device of a direct payload."""
        devices = await self.encryption_targets(payload)
        return self._encryptor.content(message_id, payload, devices)

    def _ready_targets(self, payload: dict[str, Any]) -> list[StoredDevice] | None:
        """The devices a direct message goes to if it can be encrypted now: it
        would be the next to go out (the outbox is empty), the device lists are
        fresh and there is a session with each device. ``None`` otherwise: the
        outbox encrypts it in its turn (fetching, claiming keys, raising)."""
        if (
            "to" not in payload
            or not self._transport.connected
            or not self._synced.is_set()
            or self._db.outbox_count()
        ):
            return None
        peer, scope = str(payload["to"]), payload.get("scope", "all")
        users = target_users(peer, scope, self._me.username)
        lists = self._devices.fresh_devices(users)
        if len(lists) < len(users):
            return None
        try:
            targets = self._encryptor.targets_among(peer, scope, lists)
        except ClientError:
            return None
        return targets if self._encryptor.has_sessions(targets) else None

    async def send_typing(self, data: tuple[str, bool]) -> None:
        """A typing indicator: encrypted, sent at once, never stored (a worker step)."""
        peer, typing = data
        payload = {
            "to": peer,
            "type": "typing",
            "scope": "peer",
            "typing": typing,
            "sent_at": self._clock(),
        }
        message_id = new_message_id()
        try:
            envelopes = await self.encrypt_for(message_id, payload)
            if envelopes:
                await self._transport.call(
                    "send",
                    {"client_message_id": message_id, "envelopes": envelopes, "ephemeral": True},
                )
        except (ProtocolError, ClientError) as exc:
            log.info("typing indicator not sent: %s", exc)


def _ttl(payload: dict[str, Any]) -> dict[str, Any]:
    return {"ttl_ms": payload["ttl_ms"]} if payload.get("ttl_ms") else {}


def _send_size(item: OutboxItem) -> int:
    """About how many bytes an outbox item adds to a frame (its ciphertexts,
    or its plaintext body if not encrypted yet)."""
    if item.envelopes is not None:
        return sum(len(str(e.get("body", ""))) + 64 for e in item.envelopes)
    return 2 * len(str(item.payload.get("body", ""))) + 512
