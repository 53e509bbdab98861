"""``bisik send USER --file PATH`` and ``bisik download MSGID``, with a progress bar."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from bisik.cli._output import clean
from bisik.cli._session import Session
from bisik.client import AttachmentError, Client


async def send_file(client: Client, args: argparse.Namespace, session: Session) -> int:
    """Upload ``--file`` (or ``--view-once``) to ``args.user``; ``client`` is open."""
    out = session.out
    await session.connect(client, required=True)
    view_once = args.view_once is not None
    path = Path(args.view_once if view_once else args.file)
    with out.progress(f"upload {path.name}") as progress:
        message = await client.send_file(
            args.user,
            path,
            caption=args.caption or args.text or "",
            progress=progress,
            strip_metadata=not args.keep_metadata,
            reply_to=args.reply,
            view_once=view_once,
        )
    try:
        stored = await client.wait_sent(message.id, timeout=args.wait)
    except TimeoutError:
        out.message(message, event="queued")
        return 0
    message = dataclasses.replace(stored, attachment=message.attachment)
    out.message(message, event="sent")
    return 0 if message.state == "sent" else 1


async def download(args: argparse.Namespace, session: Session) -> int:
    async with session.open() as client:
        found = client.attachment(args.message_id)
        if found is None:
            raise AttachmentError(f"message {args.message_id} has no attachment here")
        info, _ = found
        # The blob is fetched over HTTP; no need to wait for the socket's backlog.
        with session.out.progress(f"download {info.name}") as progress:
            path = await client.download_attachment(args.message_id, args.out, progress=progress)
        session.out.emit(
            {"event": "downloaded", "id": args.message_id, "path": str(path), **info.public_json()},
            f"saved {clean(info.name)} ({info.size:,} bytes) to {clean(str(path))}",
        )
    return 0
