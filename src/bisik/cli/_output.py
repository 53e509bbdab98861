from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

from bisik.client import Message


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
        when = dt.datetime.fromtimestamp(message.sent_at / 1000).strftime("%Y-%m-%d %H:%M")
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

    def error(self, code: str, text: str) -> None:
        if self.as_json:
            print(json.dumps({"event": "error", "code": code, "message": text}), flush=True)
        print(f"error: {text}", file=sys.stderr, flush=True)
