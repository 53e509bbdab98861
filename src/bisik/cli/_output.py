"""How commands print: human lines or JSON objects, messages, events, progress bars."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

from bisik.client import (
    GroupChanged,
    Message,
    MessagesExpired,
    MessageWaiting,
    PresenceChanged,
    ReceiptUpdated,
    TimerChanged,
    TypingChanged,
    describe_timer,
)


def local_time(ms: int) -> str:
    """A timestamp in milliseconds as local ``YYYY-MM-DD HH:MM``."""
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


class Output:
    """Human lines, or one JSON object per line with ``--json``."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, obj: dict[str, Any], text: str) -> None:
        if self.as_json:
            print(json.dumps(obj, ensure_ascii=False), flush=True)
        else:
            print(text, flush=True)

    def message(self, message: Message, *, event: str = "message") -> None:
        when = local_time(message.sent_at)
        peer = message.conversation.removeprefix("@")
        arrow = f"{message.sender} -> {peer}" if message.direction == "out" else message.sender
        status = "" if message.state in ("received", "sent") else f" [{message.state}]"
        body = message.body
        if message.attachment is not None:
            a = message.attachment
            dims = f", {a.width}x{a.height}" if a.width and a.height else ""
            body = f"[{a.kind}: {a.name}, {a.size:,} bytes{dims}; id {message.id}] {body}"
        if message.kind == "timer":
            self.emit({"event": event, **message.to_json()}, f"[{when}] ({body})")
            return
        if message.deleted:
            body = "(message deleted)"
        notes = []
        if message.reply_to:
            notes.append(f"reply to {message.reply_to}")
        if message.edited_at:
            notes.append("edited")
        if message.expires_in:
            notes.append(f"disappears {message.expires_in // 1000}s")
        if message.reactions:
            notes.append(" ".join(f"{e} {u}" for u, e in message.reactions.items()))
        extra = f" ({'; '.join(notes)})" if notes else ""
        self.emit(
            {"event": event, **message.to_json()},
            f"[{when}] {arrow}: {body}{status}{extra}  [id {message.id}]",
        )

    def signal(self, event: object) -> None:
        """Receipts, typing, presence, group and timer changes, as one line (or JSON object)."""
        if isinstance(event, ReceiptUpdated):
            self.emit(
                {
                    "event": "receipt",
                    "kind": event.kind,
                    "user": event.username,
                    "device_id": event.device_id,
                    "ids": event.message_ids,
                },
                f"({event.username} {'read' if event.kind == 'read' else 'received'} "
                f"{len(event.message_ids)} message(s))",
            )
        elif isinstance(event, TypingChanged):
            self.emit(
                {"event": "typing", "user": event.username, "typing": event.typing},
                f"({event.username} is typing...)"
                if event.typing
                else f"({event.username} stopped)",
            )
        elif isinstance(event, GroupChanged):
            who = ", ".join(event.usernames)
            text = {
                "created": f"{event.actor} created the group with {who}",
                "added": f"{event.actor} added {who}",
                "removed": f"{event.actor} removed {who}",
                "left": f"{event.actor} left",
                "promoted": f"{event.actor} made {who} admin",
                "renamed": f"{event.actor} renamed the group to {who}",
            }.get(event.kind, f"group changed ({event.kind})")
            self.emit(
                {
                    "event": "group_changed",
                    "group_id": event.group_id,
                    "kind": event.kind,
                    "actor": event.actor,
                    "users": event.usernames,
                },
                f"(#{event.group_id}: {text})",
            )
        elif isinstance(event, TimerChanged):
            setting = describe_timer(event.expires_in)
            self.emit(
                {
                    "event": "timer",
                    "conversation": event.conversation,
                    "user": event.username,
                    "expires_in": event.expires_in,
                },
                f"({event.username} set disappearing messages to {setting})",
            )
        elif isinstance(event, MessagesExpired):
            self.emit(
                {"event": "expired", "conversation": event.conversation, "ids": event.message_ids},
                f"({len(event.message_ids)} message(s) disappeared)",
            )
        elif isinstance(event, MessageWaiting):
            self.emit(
                {
                    "event": "waiting_for_key",
                    "conversation": event.conversation,
                    "user": event.sender,
                    "device_id": event.sender_device,
                },
                f"({event.sender} sent a message to {event.conversation}; waiting for its key)",
            )
        elif isinstance(event, PresenceChanged):
            state = "online" if event.online else "offline"
            self.emit(
                {
                    "event": "presence",
                    "user": event.username,
                    "online": event.online,
                    "last_seen_at": event.last_seen_at,
                },
                f"({event.username} is {state})",
            )

    def error(self, code: str, text: str) -> None:
        if self.as_json:
            print(json.dumps({"event": "error", "code": code, "message": text}), flush=True)
        print(f"error: {text}", file=sys.stderr, flush=True)

    @contextmanager
    def progress(self, label: str) -> Iterator[Callable[[int, int], None]]:
        """A byte progress bar (speed, ETA) on stderr; silent with ``--json`` or no terminal."""
        bar: tqdm[None] | None = None
        shown = 0

        def update(done: int, total: int) -> None:
            nonlocal bar, shown
            if bar is None:
                bar = tqdm(
                    total=total,
                    desc=label,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    file=sys.stderr,
                    disable=self.as_json or not sys.stderr.isatty(),
                    leave=False,
                )
            bar.update(done - shown)
            shown = done

        try:
            yield update
        finally:
            if bar is not None:
                bar.close()
