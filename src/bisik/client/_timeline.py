"""The local timeline: the messages this device shows and what was done to them
(replies, disappearing timers, view once, edits, deletion, reactions).

Synchronous, no I/O but the local database: the sync core stores received
messages and applies actions through it, the services read it. Writes run
inside the caller's ``LocalStore.transaction()`` unless a method says otherwise.

A conversation's timer is set by an end-to-end encrypted ``timer`` action
that also leaves a note in the timeline on every device. Each message carries
its timer inside the encryption: the sender's devices count from sending, a
recipient from reading, and nobody keeps it past ``HARD_CAP_FACTOR`` times the
timer after it was sent (the server purges its envelopes then too). Actions
reference their target by ``(sender, id)`` and are checked by every receiving
device: only the sender edits or deletes for everyone, within ``EDIT_WINDOW_MS``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from bisik.client._attachment_info import AttachmentInfo
from bisik.client._clock import Clock
from bisik.client._errors import ClientError
from bisik.client._models import (
    ActionContent,
    DeviceStamp,
    Event,
    GroupPlaintext,
    Message,
    MessageChanged,
    MessageReceived,
    MessagesExpired,
    Plaintext,
    TimerChanged,
)
from bisik.client._store import LocalStore
from bisik.client._timeline_store import Extras, Key, TimelineStore

log = logging.getLogger("bisik.client.timeline")

# The timers a user can pick, in seconds (Signal's, plus 8 hours and 4 weeks).
TIMER_CHOICES_S = (30, 300, 3600, 8 * 3600, 24 * 3600, 7 * 24 * 3600, 28 * 24 * 3600)
EDIT_WINDOW_MS = 24 * 3600 * 1000
HARD_CAP_FACTOR = 2
# A view-once message nobody opens goes after this long; an opened one after
# ``VIEW_ONCE_WINDOW_MS`` (time to look at the file the download saved).
VIEW_ONCE_MAX_MS = 14 * 24 * 3600 * 1000
VIEW_ONCE_WINDOW_MS = 5 * 60 * 1000
MAX_EMOJI_CHARS = 16


def describe_timer(expires_in: int | None) -> str:
    """``24 hours``, ``1 week``, ``5 minutes``... (``off`` for ``None``)."""
    if not expires_in:
        return "off"
    seconds = expires_in // 1000
    for unit, size in (("week", 7 * 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


class Timeline:
    """Messages as this device shows them, over the ``TimelineStore``."""

    def __init__(self, db: LocalStore, me: DeviceStamp, clock: Clock, home: Path) -> None:
        self.db = db
        self.rows = TimelineStore(db)
        self._me = me
        self._clock = clock
        self._home = home
        # Blobs we uploaded for messages now gone: the actions service deletes
        # them from the server.
        self._doomed_blobs: list[str] = []

    # -- reading ------------------------------------------------------------------------

    def message(self, sender: str, message_id: str) -> Message | None:
        found = self.rows.message(sender, message_id)
        return None if found is None else self.with_extras([found])[0]

    def find(self, message_id: str) -> Message | None:
        sender = self.rows.sender_of(message_id)
        return None if sender is None else self.message(sender, message_id)

    def require(self, message_id: str) -> Message:
        found = self.find(message_id)
        if found is None:
            raise ClientError(f"no message {message_id}")
        return found

    def history(self, conversation: str, limit: int, before: int | None) -> list[Message]:
        return self.with_extras(self.rows.history(conversation, limit, before))

    def unread(self, limit: int) -> list[Message]:
        """Incoming messages not yet returned here (a cursor kept in the profile)."""
        cursor = int(self.db.get_meta("unread_cursor") or 0)
        messages, last = self.rows.incoming_after(cursor, limit)
        if messages:
            with self.db.transaction():
                self.db.set_meta("unread_cursor", str(last))
        return self.with_extras(messages)

    def edits(self, message_id: str) -> list[tuple[str, int]]:
        target = self.require(message_id)
        return self.rows.edits((target.sender, target.id))

    def timer(self, conversation: str) -> int | None:
        found = self.rows.timer(conversation)
        return None if found is None else found[0]

    def outgoing_extras(self, conversation: str, reply_to: str | None) -> dict[str, Any]:
        """What a new message carries: the conversation's timer, and what it replies to."""
        extras: dict[str, Any] = {}
        if reply_to is not None:
            if self.find(reply_to) is None:
                raise ClientError(f"no message {reply_to} to reply to")
            extras["reply_to"] = reply_to
        expires_in = self.timer(conversation)
        if expires_in:
            extras["expires_in"] = expires_in
            extras["ttl_ms"] = HARD_CAP_FACTOR * expires_in
        return extras

    def view_once_opened(self, message: Message) -> bool:
        return self.rows.opened_at((message.sender, message.id)) is not None

    def with_extras(self, messages: list[Message]) -> list[Message]:
        """Add attachment, reply, timer, edit, deletion and reaction state to
        stored messages."""
        if not messages:
            return messages
        keys = [(m.sender, m.id) for m in messages]
        attachments = self.rows.attachments_of(keys)
        all_extras = self.rows.extras_of(keys)
        all_reactions = self.rows.reactions_of(keys)
        out = []
        for m, key in zip(messages, keys, strict=True):
            if key in attachments:
                m = dataclasses.replace(
                    m, attachment=AttachmentInfo.model_validate_json(attachments[key])
                )
            extras = all_extras.get(key)
            reactions = all_reactions.get(key, {})
            if extras is None and not reactions:
                out.append(m)
                continue
            x = extras if extras is not None else Extras()
            out.append(
                dataclasses.replace(
                    m,
                    kind=x.kind,
                    reply_to=x.reply_to,
                    expires_in=x.expires_in,
                    expires_at=min(
                        (t for t in (x.expire_at, x.hard_expire_at) if t is not None),
                        default=None,
                    ),
                    view_once=x.view_once,
                    edited_at=x.edited_at,
                    deleted=x.deleted_at is not None,
                    reactions=reactions or None,
                )
            )
        return out

    # -- storing --------------------------------------------------------------------------

    def record_extras(
        self,
        message: Message,
        *,
        reply_to: str | None = None,
        expires_in: int | None = None,
        view_once: bool = False,
        kind: str = "text",
    ) -> bool:
        """Store a new message's extras.

        Returns ``False`` if a disappearing message is already past its time
        here (a device that comes online late never shows it).
        """
        if reply_to is None and expires_in is None and not view_once and kind == "text":
            return True
        now = self._clock()
        expire_at = hard = None
        if view_once and expires_in is None:
            hard = min(message.sent_at, now) + VIEW_ONCE_MAX_MS
        if expires_in is not None:
            hard = min(message.sent_at, now) + HARD_CAP_FACTOR * expires_in
            # Ours count from sending; others' from reading (mark_read starts them).
            if message.direction == "out":
                expire_at = min(message.sent_at + expires_in, hard)
            if min(x for x in (expire_at, hard) if x is not None) <= now:
                return False
        extras = Extras(kind, reply_to, expires_in, expire_at, hard, view_once)
        self.rows.put_extras((message.sender, message.id), extras)
        return True

    def receive(
        self,
        content: Plaintext | GroupPlaintext,
        *,
        conversation: str,
        sender: str,
        sender_device: str,
        server_seq: int,
    ) -> Message | None:
        """Store a text that arrived, direct or in a group, from a peer or from
        another device of ours; ``None`` if it was here already or its time ran
        out before it reached this device (never shown)."""
        incoming = sender != self._me.username
        message = Message(
            id=content.id,
            conversation=conversation,
            sender=sender,
            sender_device=sender_device,
            direction="in" if incoming else "out",
            body=content.body,
            sent_at=content.sent_at,
            received_at=self._clock(),
            server_seq=server_seq,
            state="received" if incoming else "sent",
            attachment=content.attachment,
        )
        if not self.rows.insert_message(message):
            return None
        if not self.record_extras(
            message,
            reply_to=content.reply_to,
            expires_in=content.expires_in,
            view_once=content.view_once,
        ):
            self.forget(message.sender, message.id)
            return None
        if content.attachment is not None:
            info = content.attachment.model_dump_json()
            self.rows.put_attachment(message.sender, message.id, info, None)
        return message

    def forget(self, sender: str, message_id: str) -> None:
        """Delete a message and everything about it from this device."""
        key = (sender, message_id)
        stored = self._doom_blob(key)
        if stored is not None and stored.local_path:
            path = Path(stored.local_path)
            # Only files we saved into the profile; never the user's own originals.
            with contextlib.suppress(OSError, ValueError):
                if path.resolve().is_relative_to(self._home.resolve()):
                    path.unlink(missing_ok=True)
        self.rows.forget(key, ours=sender == self._me.username)

    def _doom_blob(self, key: Key) -> Any:
        """The message's attachment; a blob we uploaded is queued for deletion."""
        stored = self.rows.attachment_of(key)
        if stored is not None and key[0] == self._me.username:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self._doomed_blobs.append(str(json.loads(stored.info)["blob_id"]))
        return stored

    def take_doomed_blobs(self) -> list[str]:
        doomed, self._doomed_blobs = self._doomed_blobs, []
        return doomed

    @property
    def has_doomed_blobs(self) -> bool:
        return bool(self._doomed_blobs)

    def expire_now(self) -> list[Event]:
        """Delete every disappearing message whose time has come (its own
        transaction); the events to emit."""
        now = self._clock()
        due = self.rows.due(now)
        if not due:
            return []
        gone: dict[str, list[str]] = {}
        with self.db.transaction():
            for sender, message_id, conversation in due:
                self.forget(sender, message_id)
                gone.setdefault(conversation, []).append(message_id)
        self.rows.checkpoint()
        return [MessagesExpired(conversation, ids) for conversation, ids in gone.items()]

    def open_view_once(self, message: Message) -> None:
        """A view-once message was opened here: it goes after a short window."""
        now = self._clock()
        self.rows.set_opened((message.sender, message.id), now, now + VIEW_ONCE_WINDOW_MS)

    # -- actions -----------------------------------------------------------------------

    def apply_action(
        self,
        action: ActionContent,
        actor: str,
        actor_device: str,
        conversation: str,
        sent_at: int,
        action_id: str,
    ) -> list[Event]:
        """Apply an action from ``actor``; the events to emit once committed."""
        if action.kind == "timer":
            return self._apply_timer(action, actor, actor_device, conversation, sent_at, action_id)
        if action.kind in ("forget", "opened") and actor != self._me.username:
            return _refuse(actor, action, "only our own devices forget for us")
        if action.target is None or action.target_sender is None:
            return _refuse(actor, action, "no target")
        target = self.message(action.target_sender, action.target)
        if target is None:
            # Gone already (expired, deleted) or never here: nothing to do.
            return []
        if target.conversation != conversation and action.kind not in ("forget", "opened"):
            return _refuse(actor, action, "the target is in another conversation")
        if action.kind in ("forget", "opened"):
            self.forget(target.sender, target.id)
            return [MessagesExpired(target.conversation, [target.id])]
        if action.kind == "react":
            return self._apply_reaction(target, action, actor, sent_at)
        if actor != target.sender:
            return _refuse(actor, action, "only the sender can change a message")
        if not 0 <= sent_at - target.sent_at <= EDIT_WINDOW_MS or target.deleted:
            return _refuse(actor, action, "past the 24-hour window")
        key = (target.sender, target.id)
        if action.kind == "edit":
            if not action.body:
                return _refuse(actor, action, "empty edit")
            self.rows.add_edit(key, target.body, sent_at)
            if target.edited_at is None or sent_at >= target.edited_at:
                self.rows.set_body(key, action.body)
                self.rows.set_edited(key, sent_at)
            kind = "edited"
        else:
            self._doom_blob(key)
            self.rows.set_deleted(key, sent_at)
            kind = "deleted"
        changed = self.message(*key)
        assert changed is not None
        return [MessageChanged(kind, changed)]

    def _apply_reaction(
        self, target: Message, action: ActionContent, actor: str, sent_at: int
    ) -> list[Event]:
        key = (target.sender, target.id)
        if len(action.emoji.strip()) > MAX_EMOJI_CHARS or target.deleted:
            return _refuse(actor, action, "not a reaction")
        latest = self.rows.reaction_at(key, actor)
        if latest is not None and latest > sent_at:
            return []  # a later reaction of theirs already won
        self.rows.set_reaction(key, actor, action.emoji, sent_at)
        changed = self.message(*key)
        assert changed is not None
        return [MessageChanged("reaction", changed)]

    def _apply_timer(
        self,
        action: ActionContent,
        actor: str,
        actor_device: str,
        conversation: str,
        sent_at: int,
        action_id: str,
    ) -> list[Event]:
        current = self.rows.timer(conversation)
        if current is None or current[1] <= sent_at:
            self.rows.set_timer(conversation, action.expires_in, actor, sent_at)
        setting = describe_timer(action.expires_in)
        text = (
            f"{actor} set disappearing messages to {setting}"
            if action.expires_in
            else f"{actor} turned off disappearing messages"
        )
        incoming = actor != self._me.username
        note = Message(
            id=action_id,
            conversation=conversation,
            sender=actor,
            sender_device=actor_device,
            direction="in" if incoming else "out",
            body=text,
            sent_at=sent_at,
            received_at=self._clock(),
            server_seq=None,
            state="received" if incoming else "sent",
        )
        if self.rows.insert_message(note):
            self.record_extras(note, kind="timer")
            if incoming:
                # A note, not a message to read.
                self.rows.mark_note_read((actor, action_id), self._clock())
        shown = self.message(actor, action_id)
        events: list[Event] = [TimerChanged(conversation, actor, action.expires_in)]
        if shown is not None and incoming:
            events.append(MessageReceived(shown))
        return events


def _refuse(actor: str, action: ActionContent, reason: str) -> list[Event]:
    log.warning("refused a %s from %s: %s", action.kind, actor, reason)
    return []
