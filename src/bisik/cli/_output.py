"""How commands print: human lines or JSON objects, messages, events, progress bars.

Every field that comes from a peer or the server (bodies, names, usernames, ids,
reactions, error texts) is passed through ``clean`` before it is shown, and
``Output`` cleans each line it prints once more: a terminal is never handed a
control character or bidi override that someone else chose.
"""

from __future__ import annotations

import datetime as dt
import json
import re
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

# What a terminal may act on rather than show: C0 controls (ESC starts CSI/OSC
# sequences, CR rewinds the line, BEL, BS...), DEL, C1 controls (U+009B is a
# one-character CSI), the Unicode line and paragraph separators, and the bidi
# marks, embeddings, overrides and isolates that reorder the text after them
# ("Trojan Source", CVE-2021-42574).
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f"  # C0, DEL, C1
    r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidi marks, overrides, isolates
    r"\u2028\u2029]"  # line and paragraph separators
)
# A message body's own line breaks, shown as indented continuation lines.
_CONTINUATION = "\n    "


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: str, *, multiline: bool = False) -> str:
    """Text from a peer or the server, safe to print on a terminal.

    Every control character and bidi override is shown as a visible escape
    (``\\x1b``, ``\\u202e``), so a line can be neither forged, recoloured,
    retitled nor reordered.

    Args:
        multiline: a message body: its newlines (``\\n`` or ``\\r\\n``) start an
            indented continuation line, so none can pass for a line of its own.
    """
    if not multiline:
        return _UNSAFE.sub(_escaped, text)
    lines = text.replace("\r\n", "\n").split("\n")
    return _CONTINUATION.join(_UNSAFE.sub(_escaped, line) for line in lines)


def _json_line(obj: dict[str, Any]) -> str:
    """One JSON object; the exact text, with what JSON leaves raw (DEL, C1, bidi) escaped."""
    # json.dumps escapes C0 itself; the rest can only occur inside strings,
    # where a \\uXXXX escape decodes to the same character.
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False))


def local_time(ms: int) -> str:
    """A timestamp in milliseconds as local ``YYYY-MM-DD HH:MM``."""
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


class Output:
    """Human lines, or one JSON object per line with ``--json``."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, obj: dict[str, Any], text: str) -> None:
        """Print ``obj`` (``--json``) or ``text``, whose fields the caller has ``clean``-ed;
        a control character that slipped through is escaped here all the same."""
        if self.as_json:
            print(_json_line(obj), flush=True)
        else:
            print("\n".join(clean(line) for line in text.split("\n")), flush=True)

    def message(self, message: Message, *, event: str = "message") -> None:
        when = local_time(message.sent_at)
        peer = clean(message.conversation.removeprefix("@"))
        sender = clean(message.sender)
        message_id = clean(message.id)
        arrow = f"{sender} -> {peer}" if message.direction == "out" else sender
        status = "" if message.state in ("received", "sent") else f" [{clean(message.state)}]"
        body = clean(message.body, multiline=True)
        if message.attachment is not None:
            a = message.attachment
            dims = f", {a.width}x{a.height}" if a.width and a.height else ""
            about = f"{clean(a.kind)}: {clean(a.name)}, {a.size:,} bytes{dims}; id {message_id}"
            body = f"[{about}] {body}"
        if message.kind == "timer":
            self.emit({"event": event, **message.to_json()}, f"[{when}] ({body})")
            return
        if message.deleted:
            body = "(message deleted)"
        notes = []
        if message.reply_to:
            notes.append(f"reply to {clean(message.reply_to)}")
        if message.edited_at:
            notes.append("edited")
        if message.expires_in:
            notes.append(f"disappears {message.expires_in // 1000}s")
        if message.reactions:
            notes.append(" ".join(f"{clean(e)} {clean(u)}" for u, e in message.reactions.items()))
        extra = f" ({'; '.join(notes)})" if notes else ""
        self.emit(
            {"event": event, **message.to_json()},
            f"[{when}] {arrow}: {body}{status}{extra}  [id {message_id}]",
        )

    def signal(self, event: object) -> None:
        """Receipts, typing, presence, group and timer changes, as one line (or JSON object)."""
        user = clean(str(getattr(event, "username", "")))
        if isinstance(event, ReceiptUpdated):
            self.emit(
                {
                    "event": "receipt",
                    "kind": event.kind,
                    "user": event.username,
                    "device_id": event.device_id,
                    "ids": event.message_ids,
                },
                f"({user} {'read' if event.kind == 'read' else 'received'} "
                f"{len(event.message_ids)} message(s))",
            )
        elif isinstance(event, TypingChanged):
            self.emit(
                {"event": "typing", "user": event.username, "typing": event.typing},
                f"({user} is typing...)" if event.typing else f"({user} stopped)",
            )
        elif isinstance(event, GroupChanged):
            who = ", ".join(clean(name) for name in event.usernames)
            actor = clean(event.actor)
            text = {
                "created": f"{actor} created the group with {who}",
                "added": f"{actor} added {who}",
                "removed": f"{actor} removed {who}",
                "left": f"{actor} left",
                "promoted": f"{actor} made {who} admin",
                "renamed": f"{actor} renamed the group to {who}",
            }.get(event.kind, f"group changed ({clean(event.kind)})")
            self.emit(
                {
                    "event": "group_changed",
                    "group_id": event.group_id,
                    "kind": event.kind,
                    "actor": event.actor,
                    "users": event.usernames,
                },
                f"(#{clean(event.group_id)}: {text})",
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
                f"({user} set disappearing messages to {setting})",
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
                f"({clean(event.sender)} sent a message to {clean(event.conversation)}; "
                "waiting for its key)",
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
                f"({user} is {state})",
            )

    def error(self, code: str, text: str) -> None:
        """An error on stderr (and as JSON on stdout); its text may quote the server or a peer."""
        if self.as_json:
            print(_json_line({"event": "error", "code": code, "message": text}), flush=True)
        print(f"error: {clean(text)}", file=sys.stderr, flush=True)

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
                    desc=clean(label),
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
