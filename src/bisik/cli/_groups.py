"""`bisik group ...`: create and manage groups (membership on the server,
names end-to-end encrypted)."""

from __future__ import annotations

import argparse
from typing import Any

from bisik.cli._commands import connect
from bisik.cli._output import Output
from bisik.client import Client, LocalGroup


def add_parser(sub: Any) -> None:
    group = sub.add_parser("group", help="create and manage groups (address them as #NAME)")
    actions = sub.nested(group, "group_command")
    create = actions.add_parser("create", help="create a group, with you as admin")
    create.add_argument("name")
    create.add_argument("--members", default="", help="comma-separated usernames")
    create.add_argument("--description", default="")
    add = actions.add_parser("add", help="add members (admins)")
    add.add_argument("group", metavar="GROUP")
    add.add_argument("users", nargs="+", metavar="USER")
    remove = actions.add_parser("remove", help="remove a member (admins)")
    remove.add_argument("group", metavar="GROUP")
    remove.add_argument("user", metavar="USER")
    leave = actions.add_parser("leave", help="leave a group")
    leave.add_argument("group", metavar="GROUP")
    promote = actions.add_parser("promote", help="make a member an admin (admins)")
    promote.add_argument("group", metavar="GROUP")
    promote.add_argument("user", metavar="USER")
    rename = actions.add_parser("rename", help="rename a group (admins)")
    rename.add_argument("group", metavar="GROUP")
    rename.add_argument("name")
    actions.add_parser("list", help="the groups you are in")
    info = actions.add_parser("info", help="a group's members and roles")
    info.add_argument("group", metavar="GROUP")


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
        m.username + (" (admin)" if m.role == "admin" else "") for m in group.members
    )
    out.emit(
        {"event": event, **_json(group)},
        f"#{group.name or '(unnamed)'} [{group.group_id}]: {members or 'no members'}",
    )


async def dispatch(client: Client, args: argparse.Namespace, out: Output) -> int:
    command = args.group_command
    if command == "list":
        await connect(client, out, required=False)
        for group in client.groups():
            _show(out, group, "group")
        return 0
    await connect(client, out, required=True)
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
        event = "group_updated"
    elif command == "remove":
        group = await client.remove_member(args.group, args.user)
        event = "group_updated"
    elif command == "promote":
        group = await client.promote(args.group, args.user)
        event = "group_updated"
    elif command == "rename":
        group_id = client.group(args.group).group_id
        await client.rename_group(group_id, args.name)
        group = client.group(group_id)
        event = "group_updated"
    else:
        group = client.group(args.group)
        await client.leave_group(args.group)
        out.emit(
            {"event": "group_left", "group_id": group.group_id},
            f"left #{group.name or group.group_id}",
        )
        return 0
    # Renames and the name for new members go out as group messages now.
    await client.drain_outbox(15)
    _show(out, group, event)
    return 0
