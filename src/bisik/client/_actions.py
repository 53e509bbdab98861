"""Message actions (react, edit, delete, view once), disappearing timers and
their expiry: what the user does to the timeline, applied here at once and
sent end-to-end encrypted to everyone in the conversation (or, for what only
concerns us, to our other devices)."""

from __future__ import annotations

import logging

from bisik.client._clock import Clock
from bisik.client._errors import ClientError
from bisik.client._events import EventBus
from bisik.client._membership import Membership
from bisik.client._models import ActionContent, DeviceStamp, Message, MessagesExpired, MessagesRead
from bisik.client._outbox import Outbox
from bisik.client._signals import Signals
from bisik.client._timeline import EDIT_WINDOW_MS, MAX_EMOJI_CHARS, TIMER_CHOICES_S, Timeline
from bisik.client._transport import Transport
from bisik.client._worker import Step, Worker
from bisik.proto import ProtocolError

log = logging.getLogger("bisik.client.actions")

EXPIRY_CHECK_S = 1.0
MAX_EDIT_BYTES = 16 * 1024


class Actions:
    def __init__(
        self,
        *,
        timeline: Timeline,
        outbox: Outbox,
        membership: Membership,
        signals: Signals,
        me: DeviceStamp,
        transport: Transport,
        worker: Worker,
        events: EventBus,
        clock: Clock,
    ) -> None:
        self._timeline = timeline
        self._outbox = outbox
        self._membership = membership
        self._signals = signals
        self._me = me
        self._transport = transport
        self._worker = worker
        self._events = events
        self._clock = clock

    # -- timers -----------------------------------------------------------------------

    def set_timer(self, conversation: str, seconds: int | None) -> Message:
        """Set (or with ``None``, turn off) the timer for everyone in the conversation.

        Returns the timeline note it leaves ("alice set disappearing messages to 24 hours").
        """
        if seconds is not None and seconds not in TIMER_CHOICES_S:
            choices = ", ".join(str(s) for s in TIMER_CHOICES_S)
            raise ClientError(f"a timer is off or one of {choices} seconds")
        expires_in = seconds * 1000 if seconds else None
        action = ActionContent(kind="timer", expires_in=expires_in)
        action_id = self._apply(conversation, action)
        note = self._timeline.message(self._me.username, action_id)
        assert note is not None
        return note

    # -- actions ------------------------------------------------------------------------

    def react(self, message_id: str, emoji: str) -> None:
        """React to a message (one emoji per user; an empty ``emoji`` removes ours)."""
        target = self._timeline.require(message_id)
        emoji = emoji.strip()
        if len(emoji) > MAX_EMOJI_CHARS:
            raise ClientError("a reaction is one emoji")
        self._act(
            target,
            ActionContent(kind="react", target=target.id, target_sender=target.sender, emoji=emoji),
        )

    def edit(self, message_id: str, text: str) -> Message:
        """Edit one of our messages (within 24 hours); every device keeps the old text."""
        target = self._timeline.require(message_id)
        if target.sender != self._me.username or target.kind != "text" or target.deleted:
            raise ClientError("you can only edit your own messages")
        if self._clock() - target.sent_at > EDIT_WINDOW_MS:
            raise ClientError("messages can be edited for 24 hours")
        if not text or len(text.encode()) > MAX_EDIT_BYTES:
            raise ClientError("the new text must be 1-16,384 bytes")
        self._act(
            target,
            ActionContent(kind="edit", target=target.id, target_sender=target.sender, body=text),
        )
        changed = self._timeline.message(target.sender, target.id)
        assert changed is not None
        return changed

    def delete(self, message_id: str, *, everyone: bool = False) -> None:
        """Delete a message on all our devices, or (``everyone``, our own, within
        24 hours) on every device of everyone in the conversation."""
        target = self._timeline.require(message_id)
        if everyone:
            if target.sender != self._me.username or target.kind != "text":
                raise ClientError("you can only delete your own messages for everyone")
            if self._clock() - target.sent_at > EDIT_WINDOW_MS:
                raise ClientError("messages can be deleted for everyone for 24 hours")
        self._act(
            target,
            ActionContent(
                kind="delete" if everyone else "forget",
                target=target.id,
                target_sender=target.sender,
            ),
        )

    def opened_view_once(self, message: Message) -> None:
        """A view-once message was opened here (inside the caller's transaction):
        it goes after a short window here, at once on our other devices."""
        self._timeline.open_view_once(message)
        self.send(
            message.conversation,
            ActionContent(kind="opened", target=message.id, target_sender=message.sender),
            own_only=True,
        )

    def _act(self, target: Message, action: ActionContent) -> None:
        self._apply(target.conversation, action, own_only=action.kind in ("forget", "opened"))
        self._release_blobs()

    def _apply(self, conversation: str, action: ActionContent, *, own_only: bool = False) -> str:
        """Send an action and apply it here, in one transaction."""
        with self._timeline.db.transaction():
            action_id, sent_at = self.send(conversation, action, own_only=own_only)
            events = self._timeline.apply_action(
                action, self._me.username, self._me.device_id, conversation, sent_at, action_id
            )
        self._events.emit_all(events)
        return action_id

    def send(
        self, conversation: str, action: ActionContent, *, own_only: bool = False
    ) -> tuple[str, int]:
        """Queue an action to everyone in the conversation (``own_only``: our
        other devices). Returns its id and time."""
        now = self._clock()
        payload = {"type": "action", "action": action.model_dump(), "sent_at": now}
        if conversation.startswith("#") and not own_only:
            return self._outbox.queue(conversation, {**payload, "group": conversation[1:]}), now
        peer = conversation[1:] if conversation.startswith("@") else self._me.username
        route = {"to": peer, "scope": "own" if own_only else "all", "conversation": conversation}
        return self._outbox.queue(conversation, {**payload, **route}), now

    # -- read state ---------------------------------------------------------------------

    def mark_read(self, peer: str) -> int:
        """Mark the conversation with ``peer`` read, here and on our other devices.

        Sends a read receipt to ``peer`` if read receipts are on. Returns how
        many messages were newly marked.
        """
        conversation = self._membership.conversation_id(peer)
        unread = self._timeline.rows.unread(conversation)
        if not unread:
            return 0
        with self._timeline.db.transaction():
            ids = self._timeline.rows.mark_read(conversation, [i for _, i in unread], self._clock())
            if not peer.startswith("#"):  # group read state stays on this device for now
                self._outbox.queue_receipt(peer, "own", "read", ids)
                if self._signals.enabled("read_receipts"):
                    self._outbox.queue_receipt(peer, "peer", "read", ids)
        self._events.emit(MessagesRead(conversation, ids))
        return len(ids)

    # -- expiry ---------------------------------------------------------------------------

    def expire_now(self) -> int:
        """Delete every disappearing message whose time has come; returns how many."""
        events = self._timeline.expire_now()
        self._release_blobs()
        self._events.emit_all(events)
        return sum(len(e.message_ids) for e in events if isinstance(e, MessagesExpired))

    async def expire_step(self, _: object = None) -> None:
        self.expire_now()

    def check_expiry(self) -> None:
        """Queue an expiry step if a message is due (every ``EXPIRY_CHECK_S``)."""
        if self._timeline.rows.any_due(self._clock()):
            self._worker.submit(Step.EXPIRE)

    def _release_blobs(self) -> None:
        if self._timeline.has_doomed_blobs:
            self._worker.submit(Step.DELETE_BLOBS)

    async def delete_blobs(self, _: object = None) -> None:
        """Delete from the server the blobs of our messages that are gone (best
        effort: the server drops them by their time to live anyway)."""
        for blob_id in self._timeline.take_doomed_blobs():
            try:
                await self._transport.request("DELETE", f"/v1/blobs/{blob_id}")
            except ProtocolError as exc:
                log.info("blob %s not deleted: %s", blob_id[:8], exc.code)
