"""``bisik account create``, ``recover``, ``info`` and ``password``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from bisik.cli._session import Session, read_password
from bisik.client import Client, ClientError


async def run(args: argparse.Namespace, session: Session) -> int:
    if args.account_command == "create":
        return await _create(args, session)
    if args.account_command == "recover":
        return await _recover(args, session)
    if args.account_command == "password":
        return await _change_password(session)
    return await _info(session)


async def _create(args: argparse.Namespace, session: Session) -> int:
    password = read_password(confirm=True)
    client = await Client.create_account(
        session.home,
        server_url=args.server,
        username=args.username,
        password=password,
        invite=args.invite,
    )
    async with client:
        session.out.emit(
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


async def _recover(args: argparse.Namespace, session: Session) -> int:
    key = os.environ.get("BISIK_RECOVERY_KEY")
    if key is None:
        if not sys.stdin.isatty():
            raise ClientError("no recovery key: set BISIK_RECOVERY_KEY or run in a terminal")
        key = await asyncio.to_thread(input, "Recovery key: ")
    password = read_password(confirm=True)
    client = await Client.recover(
        session.home,
        server_url=args.server,
        username=args.username,
        recovery_key=key,
        password=password,
        revoke_others=not args.keep_devices,
    )
    async with client:
        restored = sum(len(client.history(c.removeprefix("@"))) for c, _ in client.conversations())
        session.out.emit(
            {
                "event": "recovered",
                "username": client.username,
                "device_id": client.device_id,
                "messages": restored,
            },
            f"Recovered {client.username} on device {client.device_id} "
            f"({restored} messages restored).",
        )
    return 0


async def _change_password(session: Session) -> int:
    old = read_password()
    new = read_password(confirm=True, env="BISIK_NEW_PASSWORD", prompt="New password: ")
    async with session.open(old) as client:
        client.change_password(old, new)
    session.out.emit({"event": "password_changed"}, "password changed")
    return 0


async def _info(session: Session) -> int:
    async with session.open() as client:
        session.out.emit(
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
