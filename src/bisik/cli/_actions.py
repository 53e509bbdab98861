"""`bisik timer`, `react`, `edit`, `delete`: disappearing messages and message actions."""

from __future__ import annotations

import argparse
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bisik.cli._session import Session
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


@asynccontextmanager
async def _acting(session: Session) -> AsyncIterator[Client]:
    """The open profile, connected if the server can be reached; the action goes out after."""
    async with session.open() as client:
        online = await session.connect(client, required=False)
        yield client
        if online:
            await client.drain_outbox(15)


async def timer(args: argparse.Namespace, session: Session) -> int:
    async with _acting(session) as client:
        seconds = parse_duration(args.duration)
        note = client.set_timer(args.target, seconds)
        setting = describe_timer(seconds * 1000 if seconds else None)
        session.out.emit(
            {"event": "timer", "conversation": note.conversation, "seconds": seconds},
            f"disappearing messages: {setting}",
        )
    return 0


async def react(args: argparse.Namespace, session: Session) -> int:
    async with _acting(session) as client:
        client.react(args.message_id, args.emoji)
        session.out.emit(
            {"event": "reacted", "id": args.message_id, "emoji": args.emoji},
            f"reacted {args.emoji}" if args.emoji else "reaction removed",
        )
    return 0


async def edit(args: argparse.Namespace, session: Session) -> int:
    async with _acting(session) as client:
        session.out.message(client.edit(args.message_id, args.text), event="edited")
    return 0


async def delete(args: argparse.Namespace, session: Session) -> int:
    async with _acting(session) as client:
        client.delete_message(args.message_id, everyone=args.everyone)
        session.out.emit(
            {"event": "deleted", "id": args.message_id, "everyone": args.everyone},
            "deleted for everyone" if args.everyone else "deleted on your devices",
        )
    return 0
