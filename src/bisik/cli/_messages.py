"""``bisik send``, ``receive``, ``history``, ``conversations``, ``settings`` and ``trust``."""

from __future__ import annotations

import argparse
import asyncio

from bisik.cli._attachments import send_file
from bisik.cli._output import clean
from bisik.cli._session import Session
from bisik.client import ClientError, MessageReceived


async def send(args: argparse.Namespace, session: Session) -> int:
    """A text, or with ``--file``/``--view-once`` an attachment; queued if offline."""
    out = session.out
    async with session.open() as client:
        if args.file is not None or args.view_once is not None:
            return await send_file(client, args, session)
        if args.text is None:
            raise ClientError("nothing to send: give a text or --file PATH")
        online = await session.connect(client, required=False)
        message = await client.send_text(args.user, args.text, reply_to=args.reply)
        if not online:
            out.message(message, event="queued")
            return 0
        try:
            message = await client.wait_sent(message.id, timeout=args.wait)
        except TimeoutError:
            out.message(message, event="queued")
            return 0
        out.message(message, event="sent")
        return 0 if message.state == "sent" else 1


async def receive(args: argparse.Namespace, session: Session) -> int:
    """The backlog, then (with ``--wait``) what arrives for that many seconds."""
    out = session.out
    async with session.open() as client:
        events = client.subscribe()
        await session.connect(client, required=True)
        for message in client.unread():
            out.message(message)
        if args.wait > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + args.wait
            while (left := deadline - loop.time()) > 0:
                try:
                    event = await asyncio.wait_for(events.get(), left)
                except TimeoutError:
                    break
                if isinstance(event, MessageReceived):
                    for message in client.unread():
                        out.message(message)
                else:
                    out.signal(event)
    return 0


async def history(args: argparse.Namespace, session: Session) -> int:
    async with session.open() as client:
        for message in client.history(args.user, limit=args.limit):
            session.out.message(message)
        # What was shown is read: tell our other devices (and the sender, if
        # read receipts are on) when the server can be reached.
        if client.mark_read(args.user):
            await session.connect(client, required=False)
    return 0


async def conversations(args: argparse.Namespace, session: Session) -> int:
    async with session.open() as client:
        for conversation, last in client.conversations():
            session.out.emit(
                {"conversation": conversation, "last": last},
                f"{clean(conversation)}: {clean(last)}",
            )
    return 0


async def settings(args: argparse.Namespace, session: Session) -> int:
    """Presence, typing and read receipts: set those given, print all three."""
    async with session.open() as client:
        await session.connect(client, required=True)
        changes = {
            name: value == "on"
            for name, value in (
                ("presence", args.presence),
                ("typing", args.typing),
                ("read_receipts", args.read_receipts),
            )
            if value is not None
        }
        current = await client.update_settings(**changes)
        session.out.emit(
            current,
            "\n".join(f"{k.replace('_', ' ')}: {'on' if v else 'off'}" for k, v in current.items()),
        )
    return 0


async def trust(args: argparse.Namespace, session: Session) -> int:
    async with session.open() as client:
        await session.connect(client, required=True)
        await client.trust_identity(args.user)
        session.out.emit({"event": "trusted", "user": args.user}, f"trusting {args.user}'s new key")
    return 0
