from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

from bisik.proto import (
    AckRequest,
    AckResult,
    Envelope,
    ErrorCode,
    GroupSend,
    ProtocolError,
    SendMany,
    SendManyResult,
    SendOutcome,
    SendRequest,
    SendResult,
    SyncRequest,
    SyncResult,
)
from bisik.server._clock import now_ms
from bisik.server._config import ServerConfig
from bisik.server.handlers._notifier import Notifier
from bisik.server.handlers.groups import GroupsHandler
from bisik.server.handlers.presence import PresenceHandler
from bisik.server.handlers.push import PushHandler
from bisik.server.stores import (
    DeviceHandle,
    EnvelopeRow,
    MessageStore,
    NewEnvelope,
    NewMessage,
    StoredMessage,
)

log = logging.getLogger("bisik.server.messages")

EPHEMERAL_MAX_BODY = 4096


def _envelope(row: EnvelopeRow) -> Envelope:
    return Envelope(
        id=row.id,
        seq=row.seq,
        sender=row.sender,
        sender_device=row.sender_device,
        kind="megolm" if row.kind == "megolm" else "olm",
        type=1 if row.type == 1 else 0,
        body=row.body,
        ts=row.ts,
        group_id=row.group_id,
    )


def _require_known(refs: list[tuple[str, str]], resolved: dict[tuple[str, str], int]) -> None:
    unknown = [f"{u}/{d}" for u, d in refs if (u, d) not in resolved]
    if unknown:
        raise ProtocolError(ErrorCode.UNKNOWN_DEVICE, f"no such device: {', '.join(unknown[:10])}")


class Purged(NamedTuple):
    """What one pass of the retention purge deleted."""

    messages: int
    envelopes: int
    pairs: int


class MessagesHandler:
    """Store-then-ack message relay with per-device queues."""

    def __init__(
        self,
        config: ServerConfig,
        messages: MessageStore,
        notifier: Notifier,
        presence: PresenceHandler,
        push: PushHandler,
        groups: GroupsHandler,
    ) -> None:
        self._groups = groups
        self._config = config
        self._messages = messages
        self._notifier = notifier
        self._presence = presence
        self._push = push

    async def send(self, sender: DeviceHandle, req: SendRequest) -> SendResult:
        """Store every envelope durably, then push to online recipients.

        Raises:
            ProtocolError: ``unknown_device`` if any recipient device does not
                exist (nothing is stored), ``bad_request`` for a device addressed twice.
        """
        await self._check_send(sender, req)
        if req.ephemeral:
            return await self._send_ephemeral(sender, req)
        result, _ = await self._store_send(sender, req)
        return result

    async def send_many(self, sender: DeviceHandle, req: SendMany) -> SendManyResult:
        """Several sends from one frame, stored in their order (in one transaction).
        Order is what a conversation is made of, so the first message refused
        ends the frame: the ones after it are not stored (``not_sent``) and the
        client sends them again."""
        not_sent = ProtocolError(ErrorCode.NOT_SENT, "an earlier message was refused")
        checked: list[ProtocolError | None] = []
        for message in req.messages:
            if checked and checked[-1] is not None:
                checked.append(not_sent)
                continue
            try:
                await self._check_send(sender, message)
                if message.ephemeral:
                    raise ProtocolError(ErrorCode.BAD_REQUEST, "ephemeral envelopes go alone")
                checked.append(None)
            except ProtocolError as exc:
                checked.append(exc)
        # The messages that passed are the frame's first ones, stored in order
        # (a device that does not exist refuses its message and ends the frame).
        passed = [m for m, error in zip(req.messages, checked, strict=True) if error is None]
        frame = [self._new(sender, m) for m in passed]
        stored = await self._messages.store_in_order(frame) if frame else []
        outcomes = []
        pushes: dict[int, list[Envelope]] = {}  # per device, in order: one push each
        results = [*stored, *checked[len(passed) :]]  # None: after a refused one
        for message, result in zip(req.messages, results, strict=True):
            try:
                if not isinstance(result, StoredMessage):
                    raise result or not_sent
                sent, rows = await self._settle(sender, message, result, push=False)
            except ProtocolError as exc:
                outcomes.append(SendOutcome(ok=False, error=exc.to_body()["error"]))
                continue
            outcomes.append(SendOutcome(ok=True, **sent.model_dump()))
            for row in rows:
                pushes.setdefault(row.recipient_pk, []).append(_envelope(row))
        for device_pk, envelopes in pushes.items():
            await self._notifier.deliver_many(device_pk, envelopes)
        return SendManyResult(results=outcomes)

    async def _check_send(self, sender: DeviceHandle, req: SendRequest) -> None:
        refs = [(e.username, e.device_id) for e in req.envelopes]
        if len(set(refs)) != len(refs):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "a device is addressed more than once")
        if req.group_id is not None:
            recipients = {e.username for e in req.envelopes}
            await self._groups.require_members(sender, req.group_id, recipients)

    @staticmethod
    def _new(sender: DeviceHandle, req: SendRequest) -> NewMessage:
        now = now_ms()
        return NewMessage(
            sender.pk,
            sender.username,
            sender.device_id,
            req.client_message_id,
            [NewEnvelope((e.username, e.device_id), e.kind, e.type, e.body) for e in req.envelopes],
            now,
            expires_at=None if req.ttl_ms is None else now + req.ttl_ms,
        )

    async def _store_send(
        self, sender: DeviceHandle, req: SendRequest
    ) -> tuple[SendResult, list[EnvelopeRow]]:
        """Store one send and push its envelopes."""
        stored = await self._messages.store(self._new(sender, req))
        return await self._settle(sender, req, stored, push=True)

    async def _settle(
        self,
        sender: DeviceHandle,
        req: SendRequest,
        stored: StoredMessage,
        *,
        push: bool,
    ) -> tuple[SendResult, list[EnvelopeRow]]:
        """What follows a store: the refusal of a device that does not exist, or
        the pushes (unless ``push`` is false: then the caller pushes the rows
        returned) and the bookkeeping."""
        _require_known(stored.unknown, {})
        if not stored.duplicate:
            # Before the pushes: whoever is told of this send may ask for presence.
            recipients = {e.username for e in req.envelopes}
            await self._presence.record_conversations(sender.username, recipients)
        if push:
            for row in stored.envelopes:
                await self._notifier.deliver(row.recipient_pk, _envelope(row))
        if not stored.duplicate:
            self._push.notify(stored.push)
        result = SendResult(seq=stored.seq, ts=stored.ts, duplicate=stored.duplicate)
        return result, stored.envelopes

    async def send_group(self, sender: DeviceHandle, req: GroupSend) -> SendResult:
        """Store one Megolm ciphertext for every current device of every member
        (but the sender's), then push it. Only members may send."""
        await self._groups.require_member(sender, req.group_id)
        targets = [pk for pk in await self._groups.member_devices(req.group_id) if pk != sender.pk]
        now = now_ms()
        stored = await self._messages.store(
            NewMessage(
                sender.pk,
                sender.username,
                sender.device_id,
                req.client_message_id,
                [NewEnvelope(pk, "megolm", 0, "") for pk in targets],
                now,
                group_id=req.group_id,
                group_body=req.body,
                expires_at=None if req.ttl_ms is None else now + req.ttl_ms,
            )
        )
        if stored.envelopes:  # one message: the copies differ in their id only
            copies = [(row.recipient_pk, row.id) for row in stored.envelopes]
            await self._notifier.deliver_copies(copies, _envelope(stored.envelopes[0]))
        if not stored.duplicate:
            self._push.notify(stored.push)
        return SendResult(seq=stored.seq, ts=stored.ts, duplicate=stored.duplicate)

    async def _send_ephemeral(self, sender: DeviceHandle, req: SendRequest) -> SendResult:
        """Push to online devices only (typing): never stored, members only."""
        refs = [(e.username, e.device_id) for e in req.envelopes]
        resolved = await self._messages.resolve_devices(set(refs))
        _require_known(refs, resolved)
        await self._presence.require_conversation(sender, {e.username for e in req.envelopes})
        if any(len(e.body) > EPHEMERAL_MAX_BODY for e in req.envelopes):
            raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, "ephemeral envelopes are small")
        now = now_ms()
        for e in req.envelopes:
            await self._notifier.deliver(
                resolved[(e.username, e.device_id)],
                Envelope(
                    id=0,
                    seq=0,
                    sender=sender.username,
                    sender_device=sender.device_id,
                    type=e.type,
                    body=e.body,
                    ts=now,
                    ephemeral=True,
                ),
            )
        return SendResult(seq=0, ts=now, duplicate=False)

    async def purge(self) -> Purged:
        """One pass of the retention purge (see ``run_purge``)."""
        messages, envelopes = await self._messages.purge(
            now_ms(), self._config.retention_s * 1000, self._config.dedup_window_s * 1000
        )
        pairs = await self._presence.expire_pairs(self._config.conversation_ttl_s)
        return Purged(messages, envelopes, pairs)

    async def run_purge(self) -> None:
        """Purge every ``purge_interval_s`` until cancelled: expired messages and
        envelopes, and the conversation pairs their sends recorded."""
        while True:
            try:
                purged = await self.purge()
            except Exception:
                log.exception("message purge failed")
            else:
                if any(purged):
                    log.info("purged %d messages, %d envelopes, %d conversation pairs", *purged)
            await asyncio.sleep(self._config.purge_interval_s)

    async def sync(self, device: DeviceHandle, req: SyncRequest) -> SyncResult:
        rows = await self._messages.pending(device.pk, req.after, req.limit + 1)
        return SyncResult(
            envelopes=[_envelope(r) for r in rows[: req.limit]], more=len(rows) > req.limit
        )

    async def ack(self, device: DeviceHandle, req: AckRequest) -> AckResult:
        """Delete this device's envelopes among ``req.ids``.

        An id that is not in the device's queue is passed over, whoever it was
        for and whether it is still there: refusing another device's id while it
        waits, and not once it is taken, would tell a sender (who can guess the
        ids) when the recipient synced. ``deleted`` counts the caller's own only.
        """
        return AckResult(deleted=await self._messages.ack(device.pk, req.ids))
