"""``bisik link``, ``bisik devices`` and ``bisik verify``."""

from __future__ import annotations

import argparse
import asyncio
import io
import sys

import segno

from bisik.cli._output import Output, clean, local_time
from bisik.cli._session import Session, read_password
from bisik.client import Client, ClientError, VerificationCode


def _when(ms: int | None) -> str:
    return "never" if ms is None else local_time(ms)


def _qr(text: str) -> str:
    buffer = io.StringIO()
    segno.make(text, error="l").terminal(out=buffer, compact=True)
    return buffer.getvalue()


async def link(args: argparse.Namespace, session: Session) -> int:
    """``link new`` on the new device (no profile yet), ``link approve`` on a signed-in one."""
    if args.link_command == "new":
        return await _link_new(args, session)
    async with session.open() as client:
        await session.connect(client, required=True)
        return await _approve(client, args, session.out)


async def devices(args: argparse.Namespace, session: Session) -> int:
    async with session.open() as client:
        await session.connect(client, required=True)
        return await _devices(client, args, session.out)


async def verify(args: argparse.Namespace, session: Session) -> int:
    async with session.open() as client:
        await session.connect(client, required=True)
        return await _verify(client, args, session.out)


async def _link_new(args: argparse.Namespace, session: Session) -> int:
    out = session.out
    password = read_password(confirm=True)
    request = await Client.link(session.home, server_url=args.server, password=password)
    try:
        out.emit(
            {"code": request.code, "device_id": request.device_id},
            "Scan this on a signed-in device, or run there:\n"
            f"    bisik link approve {request.code}\n\n{_qr(request.code)}\n"
            "The code works once, for 5 minutes. Waiting...",
        )
        sas = await request.wait_for_approver()
        out.emit(
            {"event": "verification", "decimals": list(sas.decimals), "emoji": sas.emoji},
            f"Verification code: {sas}   {' '.join(sas.emoji)}\n"
            "Check that the other device shows the same, and confirm there.",
        )
        client = await request.finish(device_name=args.name)
    except BaseException:
        await request.cancel()
        raise
    async with client:
        out.emit(
            {
                "event": "linked",
                "username": client.username,
                "device_id": client.device_id,
                "conversations": len(client.conversations()),
            },
            f"Linked: this is now {client.username}'s device {client.device_id}.",
        )
    return 0


async def _confirm_prompt(out: Output, sas: VerificationCode, assume_yes: bool) -> bool:
    out.emit(
        {"event": "verification", "decimals": list(sas.decimals), "emoji": sas.emoji},
        f"Verification code: {sas}   {' '.join(sas.emoji)}",
    )
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        raise ClientError("cannot confirm without a terminal: compare the codes, then use --yes")
    answer = await asyncio.to_thread(input, "Does the new device show the same code? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


async def _approve(client: Client, args: argparse.Namespace, out: Output) -> int:
    async def confirm(sas: VerificationCode) -> bool:
        return await _confirm_prompt(out, sas, args.yes)

    device_id = await client.approve_link(
        args.code, confirm=confirm, history_days=max(0, args.history)
    )
    out.emit({"event": "linked", "device_id": device_id}, f"Linked device {device_id}.")
    return 0


async def _verify(client: Client, args: argparse.Namespace, out: Output) -> int:
    number = client.safety_number(args.user)
    if args.mark:
        await client.mark_verified(args.user)
    state = "verified" if client.is_verified(args.user) else "not verified"
    out.emit(
        {"user": args.user, "safety_number": number, "verified": client.is_verified(args.user)},
        f"Safety number with {args.user} ({state}):\n\n    {number}\n\n"
        "Compare it with theirs (in person or on a call); if it matches, run\n"
        f"    bisik verify {args.user} --mark",
    )
    return 0


async def _devices(client: Client, args: argparse.Namespace, out: Output) -> int:
    action = getattr(args, "devices_command", None) or "list"
    if action == "remove":
        await client.remove_device(args.device_id)
        out.emit({"event": "removed", "device_id": args.device_id}, f"removed {args.device_id}")
        return 0
    if action == "rename":
        await client.rename_device(args.device_id, args.name)
        out.emit({"event": "renamed", "device_id": args.device_id}, f"renamed {args.device_id}")
        return 0
    for device in await client.list_devices():
        mark = " (this device)" if device.current else ""
        out.emit(
            {
                "device_id": device.device_id,
                "name": device.name,
                "created_at": device.created_at,
                "last_seen_at": device.last_seen_at,
                "current": device.current,
            },
            f"{clean(device.device_id)}  {clean(device.name)}{mark}\n"
            f"    added {_when(device.created_at)}, last seen {_when(device.last_seen_at)}",
        )
    return 0
