"""``bisik chat USER``: live incoming messages; each line you type is sent."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading

from bisik._heap import settle_heap
from bisik.cli._output import Output
from bisik.cli._session import Session
from bisik.client import (
    Client,
    ClientError,
    ConnectionChanged,
    DecryptionFailed,
    GroupChanged,
    MessageChanged,
    MessageFailed,
    MessageReceived,
    MessageSent,
    MessagesExpired,
    NotConnected,
    PresenceChanged,
    ProtocolError,
    ReceiptUpdated,
    TimerChanged,
    TypingChanged,
)

HELP = "Type a message and press Enter to send. /quit (or Ctrl-D) leaves."


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Lines from stdin, read by a daemon thread (works for terminals, pipes and files)."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\n"))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=reader, name="bisik-stdin", daemon=True).start()
    return queue


async def chat(args: argparse.Namespace, session: Session) -> int:
    async with session.open() as client:
        return await run_chat(client, args.user, session.out)


async def run_chat(client: Client, peer: str, out: Output, *, expect_replies: bool = False) -> int:
    """Chat until /quit or end of input.

    Args:
        expect_replies: at end of input, wait (up to 15 s) for as many replies
            as messages sent: how the demo runs without a terminal.
    """
    events = client.subscribe()
    await client.connect(retry=True)
    if peer.startswith("#"):
        # A group is known by name once the membership catch-up has run.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.synced.wait(), 10)
    conversation = client.conversation_id(peer)
    out.emit({"event": "chat", "peer": peer}, f"Chat with {peer}. {HELP}")
    shown = set()
    for message in client.history(peer, limit=20):
        out.message(message)
        shown.add(message.id)
    client.unread()
    client.mark_read(peer)
    try:
        seen = await client.presence(peer)
    except (ClientError, ProtocolError):
        seen = None  # offline, or no conversation yet
    if seen is not None:
        out.signal(seen)
    settle_heap()  # set up: from here on the chat runs until /quit
    lines = _stdin_lines(asyncio.get_running_loop())
    sent = 0
    replies = 0
    pending: set[str] = set()
    eof = False
    loop = asyncio.get_running_loop()
    deadline: float | None = None
    get_line: asyncio.Task[str | None] | None = None
    get_event: asyncio.Task[object] | None = None
    try:
        while True:
            if eof:
                waiting_replies = expect_replies and replies < sent
                if not pending and not waiting_replies:
                    break
                deadline = deadline or loop.time() + 15
                if loop.time() > deadline:
                    break
            if get_line is None and not eof:
                get_line = asyncio.create_task(lines.get())
            if get_event is None:
                get_event = asyncio.create_task(events.get())
            waiters: set[asyncio.Task[object]] = {get_event}
            if get_line is not None:
                waiters.add(get_line)  # type: ignore[arg-type,unused-ignore]
            done, _ = await asyncio.wait(waiters, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            if get_line is not None and get_line in done:
                line = get_line.result()
                get_line = None
                if line is None or line.strip() == "/quit":
                    eof = True
                    continue
                if not line.strip():
                    continue
                try:
                    message = await client.send_text(peer, line)
                except (ClientError, ProtocolError) as exc:
                    out.error(getattr(exc, "code", type(exc).__name__), str(exc))
                    continue
                sent += 1
                pending.add(message.id)
                if not client.connected:
                    out.message(message, event="queued")
            if get_event in done:
                event = get_event.result()
                get_event = None
                if isinstance(event, MessageReceived):
                    if event.message.conversation == conversation and (
                        event.message.id not in shown
                    ):
                        out.message(event.message)
                        replies += event.message.direction == "in"
                        client.unread()
                        client.mark_read(peer)  # shown, so read
                elif isinstance(event, MessageChanged):
                    if event.message.conversation == conversation:
                        out.message(event.message, event=event.kind)
                elif isinstance(event, MessagesExpired | TimerChanged | GroupChanged):
                    if getattr(event, "conversation", f"#{getattr(event, 'group_id', '')}") == (
                        conversation
                    ):
                        out.signal(event)
                elif isinstance(event, ReceiptUpdated | TypingChanged | PresenceChanged):
                    if event.username == peer:
                        out.signal(event)
                elif isinstance(event, MessageSent):
                    if event.message.id in pending:
                        pending.discard(event.message.id)
                        out.message(event.message, event="sent")
                elif isinstance(event, MessageFailed):
                    pending.discard(event.message_id)
                    out.error("send_failed", f"not sent: {event.reason}")
                elif isinstance(event, ConnectionChanged) and event.state != "connecting":
                    out.emit({"event": "connection", "state": event.state}, f"({event.state})")
                elif isinstance(event, DecryptionFailed):
                    out.error(
                        "decrypt_failed",
                        f"a message from {event.sender} could not be decrypted: {event.reason}",
                    )
    except NotConnected as exc:
        out.error("offline", str(exc))
        return 1
    finally:
        for task in (get_line, get_event):
            if task is not None:
                task.cancel()
    if pending:
        out.emit(
            {"event": "queued", "count": len(pending)},
            f"{len(pending)} message(s) not yet sent; they go out on the next connection",
        )
    return 0
