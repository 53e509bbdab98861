"""The ``bisik`` argument parsers and the command table: each command name to its handler."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from bisik import __version__
from bisik.cli import (
    _account,
    _actions,
    _attachments,
    _chat,
    _demo,
    _devices,
    _groups,
    _messages,
    _server,
)
from bisik.cli._output import Output
from bisik.cli._session import Session, default_home
from bisik.client import ClientError, ProtocolError, WrongPassword
from bisik.crypto import CryptoError
from bisik.server import ServerConfig

Handler = Callable[[argparse.Namespace, Session], int]
AsyncHandler = Callable[[argparse.Namespace, Session], Coroutine[Any, Any, int]]


def _in_loop(handler: AsyncHandler) -> Handler:
    """A command that runs in a fresh event loop.

    ``server`` is the one command without: ``uvicorn.run`` starts its own loop (uvloop
    when installed) and cannot run inside another.
    """

    def run(args: argparse.Namespace, session: Session) -> int:
        return asyncio.run(handler(args, session))

    return run


COMMANDS: dict[str, Handler] = {
    "server": _server.run,
    "account": _in_loop(_account.run),
    "send": _in_loop(_messages.send),
    "download": _in_loop(_attachments.download),
    "receive": _in_loop(_messages.receive),
    "history": _in_loop(_messages.history),
    "chat": _in_loop(_chat.chat),
    "trust": _in_loop(_messages.trust),
    "conversations": _in_loop(_messages.conversations),
    "group": _in_loop(_groups.run),
    "timer": _in_loop(_actions.timer),
    "react": _in_loop(_actions.react),
    "edit": _in_loop(_actions.edit),
    "delete": _in_loop(_actions.delete),
    "settings": _in_loop(_messages.settings),
    "link": _in_loop(_devices.link),
    "devices": _in_loop(_devices.devices),
    "verify": _in_loop(_devices.verify),
    "demo": _in_loop(_demo.run),
}


class _Subparsers:
    """Adds the common flags to every subcommand."""

    def __init__(self, action: Any, common: argparse.ArgumentParser) -> None:
        self._action = action
        self._common = common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._action.add_parser(
            name, parents=[self._common], **kwargs
        )
        return parser

    def nested(
        self, parser: argparse.ArgumentParser, dest: str, *, required: bool = True
    ) -> _Subparsers:
        """Subcommands of ``parser`` (``bisik group create``), with the common flags."""
        return _Subparsers(
            parser.add_subparsers(dest=dest, required=required, metavar="ACTION"), self._common
        )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``COMMANDS`` has a handler for each of its commands."""
    parser = argparse.ArgumentParser(
        prog="bisik", description="Bisik: end-to-end encrypted messaging you can host yourself."
    )
    parser.add_argument("--version", action="version", version=f"bisik {__version__}")
    parser.add_argument(
        "--home", type=Path, default=None, help="client profile directory (env BISIK_HOME)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    # The same flags after the command (`bisik send bob hi --json`); SUPPRESS
    # keeps a subcommand from resetting what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    common.add_argument("--home", type=Path, default=argparse.SUPPRESS)
    sub = _Subparsers(
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), common
    )
    _add_server(sub)
    _add_account(sub)
    _add_messaging(sub)
    _add_groups(sub)
    _add_actions(sub)
    settings = sub.add_parser("settings", help="view or set presence, typing, read receipts")
    for flag in ("--presence", "--typing", "--read-receipts"):
        settings.add_argument(flag, choices=["on", "off"], help="each is reciprocal")
    _add_devices(sub)
    demo = sub.add_parser("demo", help="embedded server + you + an echo bot, ready to chat")
    demo.add_argument("--data", type=Path, default=None, help="keep demo data here")
    demo.add_argument("--port", type=int, default=0)
    return parser


def _add_server(sub: _Subparsers) -> None:
    server = sub.add_parser("server", help="run a Bisik server (or: server invite)")
    server.add_argument(
        "action", nargs="?", choices=["run", "invite"], default="run", help="default: run"
    )
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8765)
    server.add_argument("--data", type=Path, default=Path("bisik-data"), help="data directory")
    server.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL, e.g. postgresql+asyncpg://user@host/db (default: SQLite in --data)",
    )
    server.add_argument("--invite-only", action="store_true", help="registration needs an invite")
    server.add_argument("--redis-url", default=None, help="Redis for fan-out across processes")
    server.add_argument(
        "--push-contact",
        default="mailto:admin@localhost",
        help="VAPID contact sent to Web Push services (mailto: or https: URL)",
    )
    server.add_argument(
        "--push-interval", type=int, default=30, help="seconds between pushes to one device"
    )
    blobs = server.add_argument_group("attachments (encrypted blobs)")
    blobs.add_argument("--blob-dir", type=Path, help="local blob directory (default: DATA/blobs)")
    blobs.add_argument(
        "--s3-bucket", help="store blobs in this S3-compatible bucket (AWS_* env credentials)"
    )
    blobs.add_argument("--s3-endpoint-url", help="e.g. http://127.0.0.1:9000 for MinIO")
    blobs.add_argument("--s3-region", default=None)
    blobs.add_argument(
        "--max-file-mb", type=int, default=2048, help="largest attachment, MiB (default 2048)"
    )
    blobs.add_argument(
        "--quota-mb", type=int, default=10240, help="attachments per account, MiB (default 10240)"
    )
    blobs.add_argument(
        "--blob-days", type=int, default=30, help="days a blob is kept after upload (default 30)"
    )
    limits = ServerConfig(data_dir=Path("."))
    server.add_argument(
        "--max-registrations-per-min",
        type=int,
        default=limits.registrations_per_ip_per_min,
        help="accounts and devices added per minute from one IP address",
    )
    server.add_argument(
        "--max-sign-ins-per-min",
        type=int,
        default=limits.sign_ins_per_ip_per_min,
        help="challenges and tokens asked for per minute from one IP address",
    )
    server.add_argument(
        "--max-messages-per-s",
        type=float,
        default=limits.messages_per_device_per_s,
        help=f"sends per second by one device (bursts of {limits.message_burst})",
    )
    server.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=limits.max_connections_per_ip,
        help="sockets open at once from one IP address",
    )
    server.add_argument(
        "--limit-loopback",
        action="store_true",
        help="apply the limits to 127.0.0.1 and ::1 too (exempt by default)",
    )


def _add_account(sub: _Subparsers) -> None:
    account = sub.add_parser("account", help="create or inspect this profile's account")
    acc_sub = sub.nested(account, "account_command")
    create = acc_sub.add_parser("create", help="register a new account with this device")
    create.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8765")
    create.add_argument("--username", required=True)
    create.add_argument("--invite", help="invite code, if the server is invite-only")
    recover = acc_sub.add_parser(
        "recover", help="restore the account on this device (env BISIK_RECOVERY_KEY)"
    )
    recover.add_argument("--server", required=True)
    recover.add_argument("--username", required=True)
    recover.add_argument(
        "--keep-devices", action="store_true", help="do not sign out the account's other devices"
    )
    acc_sub.add_parser("info", help="show username, device and keys")
    acc_sub.add_parser("password", help="change the profile password (env BISIK_NEW_PASSWORD)")


def _add_messaging(sub: _Subparsers) -> None:
    send = sub.add_parser("send", help="send a text message, or a file with --file")
    send.add_argument("user")
    send.add_argument("text", nargs="?", default=None)
    send.add_argument("--file", type=Path, help="send this file (encrypted) instead")
    send.add_argument("--caption", help="a caption for --file")
    send.add_argument(
        "--keep-metadata", action="store_true", help="send an image with its EXIF (GPS...) data"
    )
    send.add_argument("--reply", metavar="MSGID", help="reply to (quote) this message")
    send.add_argument(
        "--view-once", type=Path, metavar="FILE", help="send a file that opens once, then goes"
    )
    send.add_argument(
        "--wait", type=float, default=15.0, help="seconds to wait for the server (default 15)"
    )

    download = sub.add_parser("download", help="fetch, verify and decrypt an attachment")
    download.add_argument("message_id", metavar="MSGID")
    download.add_argument("--out", type=Path, help="file or directory (default: profile/downloads)")

    receive = sub.add_parser("receive", help="fetch, decrypt and print new messages")
    receive.add_argument(
        "--wait", type=float, default=0.0, help="keep listening this many seconds after the backlog"
    )

    history = sub.add_parser("history", help="show the conversation with a user")
    history.add_argument("user")
    history.add_argument("--limit", type=int, default=50)

    chat = sub.add_parser("chat", help="interactive chat with a user")
    chat.add_argument("user")

    trust = sub.add_parser("trust", help="accept a contact's new identity key (after verifying)")
    trust.add_argument("user")

    sub.add_parser("conversations", help="list conversations")


def _add_groups(sub: _Subparsers) -> None:
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


def _add_actions(sub: _Subparsers) -> None:
    timer = sub.add_parser("timer", help="set disappearing messages for a conversation")
    timer.add_argument("target", metavar="USER|#GROUP")
    timer.add_argument("duration", metavar="DURATION|off", help="30s, 5m, 1h, 8h, 24h, 1w, 4w")
    react = sub.add_parser("react", help="react to a message (an empty emoji removes yours)")
    react.add_argument("message_id", metavar="MSGID")
    react.add_argument("emoji")
    edit = sub.add_parser("edit", help="edit one of your messages (within 24 hours)")
    edit.add_argument("message_id", metavar="MSGID")
    edit.add_argument("text")
    delete = sub.add_parser("delete", help="delete a message on your devices")
    delete.add_argument("message_id", metavar="MSGID")
    delete.add_argument(
        "--everyone", action="store_true", help="your own message, for everyone (24 hours)"
    )


def _add_devices(sub: _Subparsers) -> None:
    link = sub.add_parser("link", help="link a new device to your account")
    link_sub = sub.nested(link, "link_command")
    new = link_sub.add_parser("new", help="on the new device: show a pairing code and wait")
    new.add_argument("--server", required=True)
    new.add_argument("--name", help="this device's name (default: the host name)")
    approve = link_sub.add_parser("approve", help="on a signed-in device: link the code's device")
    approve.add_argument("code")
    approve.add_argument("--yes", action="store_true", help="confirm without a prompt")
    approve.add_argument(
        "--history", type=int, default=30, metavar="DAYS", help="days of history to hand over"
    )

    devices = sub.add_parser("devices", help="list, rename or remove this account's devices")
    dev_sub = sub.nested(devices, "devices_command", required=False)
    dev_sub.add_parser("list", help="list devices (the default)")
    remove = dev_sub.add_parser("remove", help="sign a device out of the account")
    remove.add_argument("device_id")
    rename = dev_sub.add_parser("rename", help="rename a device")
    rename.add_argument("device_id")
    rename.add_argument("name")

    verify = sub.add_parser("verify", help="show a contact's safety number, mark it verified")
    verify.add_argument("user")
    verify.add_argument("--mark", action="store_true", help="mark as verified (numbers matched)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``bisik`` command; the exit code (errors are printed, 130 on Ctrl-C)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    out = Output(args.json)
    session = Session(args.home or default_home(), out)
    try:
        return COMMANDS[args.command](args, session)
    except KeyboardInterrupt:
        return 130
    except WrongPassword:
        out.error("wrong_password", "wrong password")
    except ProtocolError as exc:
        out.error(str(exc.code), f"{exc.code}: {exc.message}")
    except (ClientError, CryptoError) as exc:
        out.error(type(exc).__name__, str(exc))
    return 1
