"""`bisik timer`, `react`, `edit`, `delete`: disappearing messages and message actions."""

from __future__ import annotations

import argparse
import re
from typing import Any

from bisik.cli._commands import connect
from bisik.cli._output import Output
from bisik.client import Client, ClientError, describe_timer

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int | None:
    """``30s``, ``5m``, ``1h``, ``8h``, ``24h``, ``1w``, ``4w`` -> seconds; ``off`` -> None."""
    if text.lower() in ("off", "0"):
        return None
    match = re.fullmatch(r"(\d+)\s*([smhdw])", text.strip().lower())
    if match is None:
        raise ClientError(f"not a duration: {text!r} (like 30s, 5m, 1h, 24h, 1w or off)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def add_parsers(sub: Any) -> None:
    timer = sub.add_parser("timer", help="set disappearing messages for a conversation")
    timer.add_argument("target", metavar="USER|#GROUP")
    timer.add_argument("duration", metavar="DURATION|off", help="30s, 5m, 1h, 8h, 24h, 1w, 4w")
    react = sub.add_parser("react", help="react to a message (an empty emoji removes yours)")
    react.add_argument("message_id", metavar="MSGID")
    react.add_argument("emoji")
    edit = sub.add_parser("edit", help="edit one of your messages (within 24 hours)")
    edit.add_argument("message_id", metavar="MSGID")
    edit.add_argument("text")
    delete = sub.add_parser("delete", help="delete a message on your devices")
    delete.add_argument("message_id", metavar="MSGID")
    delete.add_argument(
        "--everyone", action="store_true", help="your own message, for everyone (24 hours)"
    )


async def dispatch(client: Client, args: argparse.Namespace, out: Output) -> int:
    online = await connect(client, out, required=False)
    if args.command == "timer":
        seconds = parse_duration(args.duration)
        note = client.set_timer(args.target, seconds)
        setting = describe_timer(seconds * 1000 if seconds else None)
        out.emit(
            {"event": "timer", "conversation": note.conversation, "seconds": seconds},
            f"disappearing messages: {setting}",
        )
    elif args.command == "react":
        client.react(args.message_id, args.emoji)
        out.emit(
            {"event": "reacted", "id": args.message_id, "emoji": args.emoji},
            f"reacted {args.emoji}" if args.emoji else "reaction removed",
        )
    elif args.command == "edit":
        out.message(client.edit(args.message_id, args.text), event="edited")
    else:
        client.delete_message(args.message_id, everyone=args.everyone)
        out.emit(
            {"event": "deleted", "id": args.message_id, "everyone": args.everyone},
            "deleted for everyone" if args.everyone else "deleted on your devices",
        )
    if online:
        await client.drain_outbox(15)
    return 0
