"""`bisik group ...`: create and manage groups (membership on the server,
names end-to-end encrypted)."""

from __future__ import annotations

import argparse
from typing import Any

from bisik.cli._output import Output, clean
from bisik.cli._session import Session
from bisik.client import Client, LocalGroup


def _json(group: LocalGroup) -> dict[str, Any]:
    return {
        "group_id": group.group_id,
        "name": group.name,
        "description": group.description,
        "version": group.version,
        "active": group.active,
        "members": [
            {"username": m.username, "role": m.role, "added_at": m.added_at} for m in group.members
        ],
    }


def _show(out: Output, group: LocalGroup, event: str) -> None:
    members = ", ".join(
        clean(m.username) + (" (admin)" if m.role == "admin" else "") for m in group.members
    )
    name = clean(group.name) or "(unnamed)"
    out.emit(
        {"event": event, **_json(group)},
        f"#{name} [{clean(group.group_id)}]: {members or 'no members'}",
    )


async def run(args: argparse.Namespace, session: Session) -> int:
    async with session.open() as client:
        return await _run(client, args, session)


async def _run(client: Client, args: argparse.Namespace, session: Session) -> int:
    out = session.out
    command = args.group_command
    if command == "list":
        await session.connect(client, required=False)
        for group in client.groups():
            _show(out, group, "group")
        return 0
    await session.connect(client, required=True)
    if command == "create":
        members = [m.strip() for m in args.members.split(",") if m.strip()]
        group = await client.create_group(args.name, members, description=args.description)
        await client.drain_outbox(15)
        _show(out, group, "group_created")
        return 0
    if command == "info":
        _show(out, client.group(args.group), "group")
        return 0
    if command == "add":
        group = await client.add_members(args.group, args.users)
    elif command == "remove":
        group = await client.remove_member(args.group, args.user)
    elif command == "promote":
        group = await client.promote(args.group, args.user)
    elif command == "rename":
        group_id = client.group(args.group).group_id
        await client.rename_group(group_id, args.name)
        group = client.group(group_id)
    else:
        group = client.group(args.group)
        await client.leave_group(args.group)
        out.emit(
            {"event": "group_left", "group_id": group.group_id},
            f"left #{clean(group.name or group.group_id)}",
        )
        return 0
    # Renames and the name for new members go out as group messages now.
    await client.drain_outbox(15)
    _show(out, group, "group_updated")
    return 0
