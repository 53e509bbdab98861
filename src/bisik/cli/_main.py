from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bisik import __version__
from bisik.cli import _commands, _server
from bisik.cli._output import Output
from bisik.client import ClientError, ProtocolError, WrongPassword
from bisik.crypto import CryptoError


def default_home() -> Path:
    env = os.environ.get("BISIK_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bisik"


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

    def nested(self, parser: argparse.ArgumentParser, dest: str) -> _Subparsers:
        """Subcommands of ``parser`` (``bisik group create``), with the common flags."""
        return _Subparsers(
            parser.add_subparsers(dest=dest, required=True, metavar="ACTION"), self._common
        )


def build_parser() -> argparse.ArgumentParser:
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

    _server.add_parser(sub)

    account = sub.add_parser("account", help="create or inspect this profile's account")
    acc_sub = _Subparsers(
        account.add_subparsers(dest="account_command", required=True, metavar="ACTION"), common
    )
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

    from bisik.cli._groups import add_parser as add_group_parser

    add_group_parser(sub)

    from bisik.cli._actions import add_parsers as add_action_parsers

    add_action_parsers(sub)

    settings = sub.add_parser("settings", help="view or set presence, typing, read receipts")
    for flag in ("--presence", "--typing", "--read-receipts"):
        settings.add_argument(flag, choices=["on", "off"], help="each is reciprocal")

    link = sub.add_parser("link", help="link a new device to your account")
    link_sub = _Subparsers(
        link.add_subparsers(dest="link_command", required=True, metavar="ACTION"), common
    )
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
    dev_sub = _Subparsers(devices.add_subparsers(dest="devices_command", metavar="ACTION"), common)
    dev_sub.add_parser("list", help="list devices (the default)")
    remove = dev_sub.add_parser("remove", help="sign a device out of the account")
    remove.add_argument("device_id")
    rename = dev_sub.add_parser("rename", help="rename a device")
    rename.add_argument("device_id")
    rename.add_argument("name")

    verify = sub.add_parser("verify", help="show a contact's safety number, mark it verified")
    verify.add_argument("user")
    verify.add_argument("--mark", action="store_true", help="mark as verified (numbers matched)")

    demo = sub.add_parser("demo", help="embedded server + you + an echo bot, ready to chat")
    demo.add_argument("--data", type=Path, default=None, help="keep demo data here")
    demo.add_argument("--port", type=int, default=0)
    return parser


def read_password(
    *, confirm: bool = False, env: str = "BISIK_PASSWORD", prompt: str = "Password: "
) -> str:
    value = os.environ.get(env)
    if value is not None:
        return value
    if not sys.stdin.isatty():
        raise ClientError(f"no password: set {env} or run in a terminal")
    password = getpass.getpass(prompt)
    if confirm and getpass.getpass("Repeat: ") != password:
        raise ClientError("the passwords differ")
    return password


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    out = Output(args.json)
    home = args.home or default_home()
    try:
        if args.command == "server":
            return _server.run(args)
        return asyncio.run(_commands.dispatch(args, home, out, read_password))
    except KeyboardInterrupt:
        return 130
    except WrongPassword:
        out.error("wrong_password", "wrong password")
    except ProtocolError as exc:
        out.error(str(exc.code), f"{exc.code}: {exc.message}")
    except (ClientError, CryptoError) as exc:
        out.error(type(exc).__name__, str(exc))
    return 1
