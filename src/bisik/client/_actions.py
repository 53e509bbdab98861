"""Disappearing messages and message actions (reply, react, edit, delete for
everyone, view once). Mixed into ``Client``.

A conversation's timer is set by an end-to-end encrypted ``timer`` action
that also leaves a note in the timeline on every device. Each message carries
its timer inside the encryption: the sender's devices count from sending, a
recipient from reading, and nobody keeps it past ``HARD_CAP_FACTOR`` times the
timer after it was sent (the server purges its envelopes then too). Actions
reference their target by ``(sender, id)`` and are checked by every receiving
device: only the sender edits or deletes for everyone, within ``EDIT_WINDOW_MS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bisik.client._errors import ClientError
from bisik.client._models import (
    ActionContent,
    Event,
    Message,
    MessageChanged,
    MessageReceived,
    MessagesExpired,
    TimerChanged,
    new_message_id,
)
from bisik.client._profile import OpenProfile
from bisik.client._store import LocalStore
from bisik.client._transport import Transport
from bisik.proto import ProtocolError

log = logging.getLogger("bisik.client.actions")

# The timers a user can pick, in seconds (Signal's, plus 8 hours and 4 weeks).
TIMER_CHOICES_S = (30, 300, 3600, 8 * 3600, 24 * 3600, 7 * 24 * 3600, 28 * 24 * 3600)
EDIT_WINDOW_MS = 24 * 3600 * 1000
HARD_CAP_FACTOR = 2
EXPIRY_CHECK_S = 1.0
# Group messages still waiting for a key are asked for again this often (ticks).
KEY_RETRY_TICKS = 31
# A view-once message nobody opens goes after this long; an opened one after
# ``VIEW_ONCE_WINDOW_MS`` (time to look at the file the download saved).
VIEW_ONCE_MAX_MS = 14 * 24 * 3600 * 1000
VIEW_ONCE_WINDOW_MS = 5 * 60 * 1000
MAX_EMOJI_CHARS = 16


def _now() -> int:
    return int(time.time() * 1000)


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


class ActionsMixin:
    username: str
    device_id: str
    _store: LocalStore
    _profile: OpenProfile
    _queue: asyncio.Queue[tuple[str, Any]]
    _emit: Callable[[Event], None]
    _transport: Transport
    _with_attachments: Callable[[list[Message]], list[Message]]
    _rerequest_keys: Callable[[], None]
    _queue_group: Callable[[str, dict[str, Any]], str]  # GroupsMixin
    conversation_id: Callable[[str], str]  # Client

    def _init_actions(self) -> None:
        # Milliseconds since the epoch; tests replace it to move time forward.
        self.clock: Callable[[], int] = _now
        self.action_stats = {"applied": 0, "refused": 0, "expired": 0}
        self._expiry_task: asyncio.Task[None] | None = None
        # Blobs we uploaded for messages now gone: deleted from the server by the worker.
        self._doomed_blobs: list[str] = []

    # -- timers -------------------------------------------------------------------

    def timer(self, target: str) -> int | None:
        """The conversation's disappearing-message timer in ms (``None``: off)."""
        row = self._store._exec(
            "SELECT expires_in FROM conversation_timers WHERE conversation = ?",
            (self.conversation_id(target),),
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def set_timer(self, target: str, seconds: int | None) -> Message:
        """Set (or with ``None``, turn off) the timer for everyone in the conversation.

        Returns the timeline note it leaves ("alice set disappearing messages to 24 hours").
        """
        if seconds is not None and seconds not in TIMER_CHOICES_S:
            choices = ", ".join(str(s) for s in TIMER_CHOICES_S)
            raise ClientError(f"a timer is off or one of {choices} seconds")
        conversation = self.conversation_id(target)
        expires_in = seconds * 1000 if seconds else None
        action = ActionContent(kind="timer", expires_in=expires_in)
        action_id, sent_at = self._send_action(conversation, action)
        with self._store.transaction():
            events = self._apply_action(
                action, self.username, self.device_id, conversation, sent_at, action_id
            )
        for event in events:
            self._emit(event)
        note = self._message(self.username, action_id)
        assert note is not None
        return note

    def _outgoing_extras(self, conversation: str, reply_to: str | None) -> dict[str, Any]:
        """What a new message carries: the conversation's timer, and what it replies to."""
        extras: dict[str, Any] = {}
        if reply_to is not None:
            if self._find(reply_to) is None:
                raise ClientError(f"no message {reply_to} to reply to")
            extras["reply_to"] = reply_to
        row = self._store._exec(
            "SELECT expires_in FROM conversation_timers WHERE conversation = ?", (conversation,)
        ).fetchone()
        if row is not None and row[0]:
            extras["expires_in"] = int(row[0])
            extras["ttl_ms"] = HARD_CAP_FACTOR * int(row[0])
        return extras

    def _record_extras(
        self,
        message: Message,
        *,
        reply_to: str | None = None,
        expires_in: int | None = None,
        view_once: bool = False,
        kind: str = "text",
    ) -> bool:
        """Store a new message's extras (inside the caller's transaction).

        Returns ``False`` if a disappearing message is already past its time
        here (a device that comes online late never shows it).
        """
        if reply_to is None and expires_in is None and not view_once and kind == "text":
            return True
        now = self.clock()
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
        self._store._exec(
            "INSERT OR REPLACE INTO message_extras (sender, message_id, kind, reply_to, "
            "expires_in, expire_at, hard_expire_at, view_once) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.sender,
                message.id,
                kind,
                reply_to,
                expires_in,
                expire_at,
                hard,
                int(view_once),
            ),
        )
        return True

    # -- actions ------------------------------------------------------------------

    def react(self, message_id: str, emoji: str) -> None:
        """React to a message (one emoji per user; an empty ``emoji`` removes ours)."""
        target = self._require(message_id)
        emoji = emoji.strip()
        if len(emoji) > MAX_EMOJI_CHARS:
            raise ClientError("a reaction is one emoji")
        self._act(
            target,
            ActionContent(kind="react", target=target.id, target_sender=target.sender, emoji=emoji),
        )

    def edit(self, message_id: str, text: str) -> Message:
        """Edit one of our messages (within 24 hours); every device keeps the old text."""
        target = self._require(message_id)
        if target.sender != self.username or target.kind != "text" or target.deleted:
            raise ClientError("you can only edit your own messages")
        if self.clock() - target.sent_at > EDIT_WINDOW_MS:
            raise ClientError("messages can be edited for 24 hours")
        if not text or len(text.encode()) > 16 * 1024:
            raise ClientError("the new text must be 1-16,384 bytes")
        self._act(
            target,
            ActionContent(kind="edit", target=target.id, target_sender=target.sender, body=text),
        )
        changed = self._message(target.sender, target.id)
        assert changed is not None
        return changed

    def delete_message(self, message_id: str, *, everyone: bool = False) -> None:
        """Delete a message on all our devices, or (``everyone``, our own, within
        24 hours) on every device of everyone in the conversation."""
        target = self._require(message_id)
        if everyone:
            if target.sender != self.username or target.kind != "text":
                raise ClientError("you can only delete your own messages for everyone")
            if self.clock() - target.sent_at > EDIT_WINDOW_MS:
                raise ClientError("messages can be deleted for everyone for 24 hours")
        self._act(
            target,
            ActionContent(
                kind="delete" if everyone else "forget",
                target=target.id,
                target_sender=target.sender,
            ),
        )

    def _act(self, target: Message, action: ActionContent) -> None:
        conversation = target.conversation
        own_only = action.kind in ("forget", "opened")
        action_id, sent_at = self._send_action(conversation, action, own_only=own_only)
        with self._store.transaction():
            events = self._apply_action(
                action, self.username, self.device_id, conversation, sent_at, action_id
            )
        for event in events:
            self._emit(event)
        self._release_blobs()

    def _doom_blob(self, key: tuple[str, str]) -> tuple[Any, ...] | None:
        """The message's attachment row ``(local_path, info)``; a blob we uploaded
        is queued for deletion from the server."""
        row = self._store._exec(
            "SELECT local_path, info FROM attachments WHERE sender = ? AND message_id = ?", key
        ).fetchone()
        if row is not None and key[0] == self.username:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self._doomed_blobs.append(str(json.loads(row[1])["blob_id"]))
        return None if row is None else tuple(row)

    def _release_blobs(self) -> None:
        if self._doomed_blobs:
            self._queue.put_nowait(("delete_blobs", None))

    async def _delete_blobs(self) -> None:
        """Delete from the server the blobs of our messages that are gone (best
        effort: the server drops them by their time to live anyway)."""
        doomed, self._doomed_blobs = self._doomed_blobs, []
        for blob_id in doomed:
            try:
                await self._transport.request("DELETE", f"/v1/blobs/{blob_id}")
            except ProtocolError as exc:
                log.info("blob %s not deleted: %s", blob_id[:8], exc.code)

    def _open_view_once(self, message: Message) -> None:
        """A view-once message was opened here: it goes after a short window, at
        once on our other devices, and cannot be opened again."""
        now = self.clock()
        key = (message.sender, message.id)
        self._upsert_extras(key, "opened_at = ?, expire_at = ?", (now, now + VIEW_ONCE_WINDOW_MS))
        self._send_action(
            message.conversation,
            ActionContent(kind="opened", target=message.id, target_sender=message.sender),
            own_only=True,
        )

    def _view_once_opened(self, message: Message) -> bool:
        row = self._store._exec(
            "SELECT opened_at FROM message_extras WHERE sender = ? AND message_id = ?",
            (message.sender, message.id),
        ).fetchone()
        return row is not None and row[0] is not None

    def _send_action(
        self, conversation: str, action: ActionContent, *, own_only: bool = False
    ) -> tuple[str, int]:
        """Queue an action through the outbox to everyone in the conversation
        (``own_only``: our other devices). Returns its id and time."""
        now = self.clock()
        payload = {"type": "action", "action": action.model_dump(), "sent_at": now}
        if conversation.startswith("#") and not own_only:
            return self._queue_group(conversation[1:], payload), now
        message_id = new_message_id()
        peer = conversation[1:] if conversation.startswith("@") else self.username
        with self._store.transaction():
            self._store.add_outbox(
                message_id,
                conversation,
                {
                    **payload,
                    "to": peer,
                    "scope": "own" if own_only else "all",
                    "conversation": conversation,
                },
                now,
            )
        self._queue.put_nowait(("flush", None))
        return message_id, now

    def _apply_action(
        self,
        action: ActionContent,
        actor: str,
        actor_device: str,
        conversation: str,
        sent_at: int,
        action_id: str,
    ) -> list[Event]:
        """Apply an action from ``actor`` (inside the caller's transaction)."""
        if action.kind == "timer":
            return self._apply_timer(action, actor, actor_device, conversation, sent_at, action_id)
        if action.kind in ("forget", "opened") and actor != self.username:
            return self._refuse(actor, action, "only our own devices forget for us")
        if action.target is None or action.target_sender is None:
            return self._refuse(actor, action, "no target")
        target = self._message(action.target_sender, action.target)
        if target is None:
            # Gone already (expired, deleted) or never here: nothing to do.
            return []
        if target.conversation != conversation and action.kind not in ("forget", "opened"):
            return self._refuse(actor, action, "the target is in another conversation")
        if action.kind in ("forget", "opened"):
            self._forget(target.sender, target.id)
            return [MessagesExpired(target.conversation, [target.id])]
        if action.kind == "react":
            return self._apply_reaction(target, action, actor, sent_at)
        if actor != target.sender:
            return self._refuse(actor, action, "only the sender can change a message")
        if not 0 <= sent_at - target.sent_at <= EDIT_WINDOW_MS or target.deleted:
            return self._refuse(actor, action, "past the 24-hour window")
        key = (target.sender, target.id)
        if action.kind == "edit":
            if not action.body:
                return self._refuse(actor, action, "empty edit")
            self._store._exec(
                "INSERT OR IGNORE INTO message_edits (sender, message_id, body, edited_at) "
                "VALUES (?, ?, ?, ?)",
                (*key, target.body, sent_at),
            )
            latest = target.edited_at is None or sent_at >= target.edited_at
            if latest:
                self._store._exec(
                    "UPDATE messages SET body = ? WHERE sender = ? AND id = ?",
                    (action.body, *key),
                )
                self._upsert_extras(key, "edited_at = ?", (sent_at,))
            kind = "edited"
        else:
            self._doom_blob(key)
            self._store._exec("UPDATE messages SET body = '' WHERE sender = ? AND id = ?", key)
            for table in ("message_edits", "reactions", "attachments"):
                self._store._exec(
                    f"DELETE FROM {table} WHERE sender = ? AND message_id = ?",  # noqa: S608
                    key,
                )
            self._upsert_extras(key, "deleted_at = ?", (sent_at,))
            kind = "deleted"
        self.action_stats["applied"] += 1
        changed = self._message(*key)
        assert changed is not None
        return [MessageChanged(kind, changed)]

    def _apply_reaction(
        self, target: Message, action: ActionContent, actor: str, sent_at: int
    ) -> list[Event]:
        key = (target.sender, target.id)
        if len(action.emoji.strip()) > MAX_EMOJI_CHARS or target.deleted:
            return self._refuse(actor, action, "not a reaction")
        row = self._store._exec(
            "SELECT at FROM reactions WHERE sender = ? AND message_id = ? AND reactor = ?",
            (*key, actor),
        ).fetchone()
        if row is not None and int(row[0]) > sent_at:
            return []  # a later reaction of theirs already won
        if action.emoji:
            self._store._exec(
                "INSERT OR REPLACE INTO reactions (sender, message_id, reactor, emoji, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (*key, actor, action.emoji, sent_at),
            )
        else:
            self._store._exec(
                "DELETE FROM reactions WHERE sender = ? AND message_id = ? AND reactor = ?",
                (*key, actor),
            )
        self.action_stats["applied"] += 1
        changed = self._message(*key)
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
        current = self._store._exec(
            "SELECT set_at FROM conversation_timers WHERE conversation = ?", (conversation,)
        ).fetchone()
        if current is None or int(current[0]) <= sent_at:
            self._store._exec(
                "INSERT OR REPLACE INTO conversation_timers "
                "(conversation, expires_in, set_by, set_at) VALUES (?, ?, ?, ?)",
                (conversation, action.expires_in, actor, sent_at),
            )
        setting = describe_timer(action.expires_in)
        text = (
            f"{actor} set disappearing messages to {setting}"
            if action.expires_in
            else f"{actor} turned off disappearing messages"
        )
        incoming = actor != self.username
        note = Message(
            id=action_id,
            conversation=conversation,
            sender=actor,
            sender_device=actor_device,
            direction="in" if incoming else "out",
            body=text,
            sent_at=sent_at,
            received_at=self.clock(),
            server_seq=None,
            state="received" if incoming else "sent",
        )
        if self._store.insert_message(note):
            self._record_extras(note, kind="timer")
            if incoming:
                # A note, not a message to read.
                self._store._exec(
                    "UPDATE messages SET read_at = ? WHERE sender = ? AND id = ?",
                    (self.clock(), actor, action_id),
                )
        self.action_stats["applied"] += 1
        shown = self._message(actor, action_id)
        events: list[Event] = [TimerChanged(conversation, actor, action.expires_in)]
        if shown is not None and incoming:
            events.append(MessageReceived(shown))
        return events

    def _refuse(self, actor: str, action: ActionContent, reason: str) -> list[Event]:
        log.warning("refused a %s from %s: %s", action.kind, actor, reason)
        self.action_stats["refused"] += 1
        return []

    def _upsert_extras(self, key: tuple[str, str], assignment: str, value: tuple[Any, ...]) -> None:
        self._store._exec(
            "INSERT OR IGNORE INTO message_extras (sender, message_id) VALUES (?, ?)", key
        )
        self._store._exec(
            f"UPDATE message_extras SET {assignment} WHERE sender = ? AND message_id = ?",  # noqa: S608
            (*value, *key),
        )

    # -- expiry -------------------------------------------------------------------

    def expire_now(self) -> int:
        """Delete every disappearing message whose time has come; returns how many.

        Runs by itself every second while connected, and before history is read.
        """
        now = self.clock()
        rows = self._store._exec(
            "SELECT x.sender, x.message_id, m.conversation FROM message_extras x "
            "JOIN messages m ON m.sender = x.sender AND m.id = x.message_id "
            "WHERE x.expire_at <= ? OR x.hard_expire_at <= ?",
            (now, now),
        ).fetchall()
        if not rows:
            return 0
        gone: dict[str, list[str]] = {}
        with self._store.transaction():
            for sender, message_id, conversation in rows:
                self._forget(str(sender), str(message_id))
                gone.setdefault(str(conversation), []).append(str(message_id))
        # Out of the WAL and into freed (zeroed: secure_delete) pages at once.
        self._store._exec("PRAGMA wal_checkpoint(TRUNCATE)")
        self._release_blobs()
        self.action_stats["expired"] += len(rows)
        for conversation, ids in gone.items():
            self._emit(MessagesExpired(conversation, ids))
        return len(rows)

    def _forget(self, sender: str, message_id: str) -> None:
        """Delete a message and everything about it from this device."""
        key = (sender, message_id)
        row = self._doom_blob(key)
        if row is not None and row[0]:
            path = Path(str(row[0]))
            # Only files we saved into the profile; never the user's own originals.
            with contextlib.suppress(OSError, ValueError):
                if path.resolve().is_relative_to(self._profile.home.resolve()):
                    path.unlink(missing_ok=True)
        for table in ("message_extras", "message_edits", "reactions", "attachments"):
            self._store._exec(
                f"DELETE FROM {table} WHERE sender = ? AND message_id = ?",  # noqa: S608
                key,
            )
        self._store._exec("DELETE FROM receipts WHERE message_id = ?", (message_id,))
        self._store._exec("DELETE FROM messages WHERE sender = ? AND id = ?", key)
        if sender == self.username:
            self._store._exec("DELETE FROM outbox WHERE message_id = ?", (message_id,))

    async def _expiry_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(EXPIRY_CHECK_S)
            ticks += 1
            if ticks % KEY_RETRY_TICKS == 0:
                self._rerequest_keys()
            now = self.clock()
            due = self._store._exec(
                "SELECT 1 FROM message_extras WHERE expire_at <= ? OR hard_expire_at <= ? LIMIT 1",
                (now, now),
            ).fetchone()
            if due is not None:
                self._queue.put_nowait(("expire", None))

    # -- reading ------------------------------------------------------------------

    def _find(self, message_id: str) -> Message | None:
        row = self._store._exec(
            "SELECT sender FROM messages WHERE id = ? LIMIT 1", (message_id,)
        ).fetchone()
        return None if row is None else self._message(str(row[0]), message_id)

    def _require(self, message_id: str) -> Message:
        found = self._find(message_id)
        if found is None:
            raise ClientError(f"no message {message_id}")
        return found

    def _message(self, sender: str, message_id: str) -> Message | None:
        row = self._store.message(sender, message_id)
        if row is None:
            return None
        return self._with_extras([Message.from_row(row)])[0]

    def _with_extras(self, messages: list[Message]) -> list[Message]:
        """Add attachment, reply, timer, edit, deletion and reaction state to
        stored messages."""
        if not messages:
            return messages
        messages = self._with_attachments(messages)
        keys = [(m.sender, m.id) for m in messages]
        all_extras = self._store.extras_of(keys)
        all_reactions = self._store.reactions_of(keys)
        out = []
        for m in messages:
            key = (m.sender, m.id)
            extras = all_extras.get(key)
            reactions = all_reactions.get(key, {})
            if extras is None and not reactions:
                out.append(m)
                continue
            kind, reply_to, expires_in, expire_at, hard, view_once, edited_at, deleted_at = (
                extras if extras is not None else ("text", None, None, None, None, 0, None, None)
            )
            out.append(
                dataclasses.replace(
                    m,
                    kind=str(kind),
                    reply_to=reply_to,
                    expires_in=expires_in,
                    expires_at=min((x for x in (expire_at, hard) if x is not None), default=None),
                    view_once=bool(view_once),
                    edited_at=edited_at,
                    deleted=deleted_at is not None,
                    reactions=reactions or None,
                )
            )
        return out

    def edits(self, message_id: str) -> list[tuple[str, int]]:
        """Earlier texts of an edited message, ``(text, replaced_at)``, oldest first."""
        target = self._require(message_id)
        rows = self._store._exec(
            "SELECT body, edited_at FROM message_edits WHERE sender = ? AND message_id = ? "
            "ORDER BY edited_at",
            (target.sender, target.id),
        ).fetchall()
        return [(str(b), int(t)) for b, t in rows]
