"""``bisik send USER --file PATH`` and ``bisik download MSGID``, with a progress bar."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from bisik.cli._output import Output
from bisik.client import AttachmentError, Client


@contextmanager
def progress_bar(label: str, out: Output) -> Iterator[Callable[[int, int], None]]:
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
                disable=out.as_json or not sys.stderr.isatty(),
                leave=False,
            )
        bar.update(done - shown)
        shown = done

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


async def send_file(client: Client, args: argparse.Namespace, out: Output) -> int:
    from bisik.cli._commands import connect

    await connect(client, out, required=True)
    view_once = args.view_once is not None
    path = Path(args.view_once if view_once else args.file)
    with progress_bar(f"upload {path.name}", out) as progress:
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


async def download(client: Client, args: argparse.Namespace, out: Output) -> int:
    found = client.attachment(args.message_id)
    if found is None:
        raise AttachmentError(f"message {args.message_id} has no attachment here")
    info, _ = found
    # The blob is fetched over HTTP; no need to wait for the socket's backlog.
    with progress_bar(f"download {info.name}", out) as progress:
        path = await client.download_attachment(args.message_id, args.out, progress=progress)
    out.emit(
        {"event": "downloaded", "id": args.message_id, "path": str(path), **info.public_json()},
        f"saved {info.name} ({info.size:,} bytes) to {path}",
    )
    return 0
