"""The client-side commands; each opens the profile, does one job, closes it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from bisik.cli._output import Output
from bisik.client import (
    Client,
    ClientError,
    GroupChanged,
    MessageReceived,
    MessagesExpired,
    MessageWaiting,
    NotConnected,
    PresenceChanged,
    ProtocolError,
    ReceiptUpdated,
    TimerChanged,
    TypingChanged,
    describe_timer,
)

PasswordReader = Callable[..., str]


@contextlib.asynccontextmanager
async def opened(home: Path, read_password: PasswordReader) -> AsyncIterator[Client]:
    client = await Client.open(home, read_password())
    try:
        yield client
    finally:
        await client.close()


async def connect(client: Client, out: Output, *, required: bool) -> bool:
    """Connect and fetch the backlog; ``False`` if the server is unreachable."""
    try:
        await client.connect()
        await asyncio.wait_for(client.synced.wait(), 30)
        # Messages queued while offline go out now, before the command ends.
        await client.drain_outbox(15)
    except (NotConnected, TimeoutError) as exc:
        if required:
            raise NotConnected(f"cannot reach {client.server_url}") from exc
        out.emit(
            {"event": "offline", "server": client.server_url},
            f"(offline: {client.server_url} unreachable)",
        )
        return False
    return True


async def dispatch(
    args: argparse.Namespace, home: Path, out: Output, read_password: PasswordReader
) -> int:
    if args.command == "account":
        return await account(args, home, out, read_password)
    if args.command == "link" and args.link_command == "new":
        from bisik.cli._devices import link_new

        return await link_new(args, home, out, read_password)
    if args.command == "demo":
        from bisik.cli._demo import run_demo

        return await run_demo(args, out)
    async with opened(home, read_password) as client:
        if args.command == "send":
            if args.file is not None or args.view_once is not None:
                from bisik.cli._attachments import send_file

                return await send_file(client, args, out)
            if args.text is None:
                raise ClientError("nothing to send: give a text or --file PATH")
            return await send(client, args, out)
        if args.command == "download":
            from bisik.cli._attachments import download

            return await download(client, args, out)
        if args.command == "receive":
            return await receive(client, args, out)
        if args.command == "history":
            for message in client.history(args.user, limit=args.limit):
                out.message(message)
            # What was shown is read: tell our other devices (and the sender, if
            # read receipts are on) when the server can be reached.
            if client.mark_read(args.user):
                await connect(client, out, required=False)
            return 0
        if args.command == "settings":
            await connect(client, out, required=True)
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
            out.emit(
                current,
                "\n".join(
                    f"{k.replace('_', ' ')}: {'on' if v else 'off'}" for k, v in current.items()
                ),
            )
            return 0
        if args.command == "conversations":
            for conversation, last in client.conversations():
                out.emit({"conversation": conversation, "last": last}, f"{conversation}: {last}")
            return 0
        if args.command == "trust":
            await connect(client, out, required=True)
            await client.trust_identity(args.user)
            out.emit({"event": "trusted", "user": args.user}, f"trusting {args.user}'s new key")
            return 0
        if args.command in ("timer", "react", "edit", "delete"):
            from bisik.cli import _actions

            return await _actions.dispatch(client, args, out)
        if args.command == "group":
            from bisik.cli import _groups

            return await _groups.dispatch(client, args, out)
        if args.command in ("link", "devices", "verify"):
            from bisik.cli import _devices

            await connect(client, out, required=True)
            return await _devices.dispatch(client, args, out)
        if args.command == "chat":
            from bisik.cli._chat import run_chat

            return await run_chat(client, args.user, out)
    raise ClientError(f"unknown command {args.command}")


async def account(
    args: argparse.Namespace, home: Path, out: Output, read_password: PasswordReader
) -> int:
    if args.account_command == "create":
        password = read_password(confirm=True)
        client = await Client.create_account(
            home,
            server_url=args.server,
            username=args.username,
            password=password,
            invite=args.invite,
        )
        async with client:
            out.emit(
                {
                    "event": "account_created",
                    "username": client.username,
                    "device_id": client.device_id,
                    "server": client.server_url,
                    "identity_key": client.identity_key,
                    "recovery_key": client.new_recovery_key,
                },
                f"created {client.username} (device {client.device_id}) on {client.server_url}\n"
                f"\nRecovery key (shown only now; write it down and keep it safe):\n\n"
                f"    {client.new_recovery_key}\n\n"
                "With it, `bisik account recover` restores this account and its history\n"
                "if every device is lost.",
            )
        return 0
    if args.account_command == "recover":
        from bisik.cli._devices import recover

        return await recover(args, home, out, read_password)
    if args.account_command == "password":
        old = read_password()
        new = read_password(confirm=True, env="BISIK_NEW_PASSWORD", prompt="New password: ")
        async with opened(home, lambda: old) as client:
            client.change_password(old, new)
        out.emit({"event": "password_changed"}, "password changed")
        return 0
    async with opened(home, read_password) as client:
        out.emit(
            {
                "username": client.username,
                "device_id": client.device_id,
                "server": client.server_url,
                "identity_key": client.identity_key,
            },
            f"{client.username} (device {client.device_id}) on {client.server_url}\n"
            f"identity key: {client.identity_key}",
        )
    return 0


async def send(client: Client, args: argparse.Namespace, out: Output) -> int:
    online = await connect(client, out, required=False)
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


async def receive(client: Client, args: argparse.Namespace, out: Output) -> int:
    events = client.subscribe()
    await connect(client, out, required=True)
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
                show_signal(out, event)
    return 0


def show_signal(out: Output, event: object) -> None:
    """Receipts, typing and presence, as one line (or JSON object) each."""
    if isinstance(event, ReceiptUpdated):
        out.emit(
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
        out.emit(
            {"event": "typing", "user": event.username, "typing": event.typing},
            f"({event.username} is typing...)" if event.typing else f"({event.username} stopped)",
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
        out.emit(
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
        out.emit(
            {
                "event": "timer",
                "conversation": event.conversation,
                "user": event.username,
                "expires_in": event.expires_in,
            },
            f"({event.username} set disappearing messages to {setting})",
        )
    elif isinstance(event, MessagesExpired):
        out.emit(
            {"event": "expired", "conversation": event.conversation, "ids": event.message_ids},
            f"({len(event.message_ids)} message(s) disappeared)",
        )
    elif isinstance(event, MessageWaiting):
        out.emit(
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
        out.emit(
            {
                "event": "presence",
                "user": event.username,
                "online": event.online,
                "last_seen_at": event.last_seen_at,
            },
            f"({event.username} is {state})",
        )


__all__ = ["ProtocolError", "dispatch"]
