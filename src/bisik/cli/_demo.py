"""``bisik demo``: an embedded SQLite server, your account and an echo bot, ready to chat."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

from bisik.cli._chat import run_chat
from bisik.cli._session import Session
from bisik.client import Client, MessageReceived
from bisik.server import EmbeddedServer, ServerConfig

# The demo's profiles live in a throwaway directory; a real profile gets the
# user's own password from `bisik account create`.
DEMO_PASSWORD = "demo"  # noqa: S105


async def _account(home: Path, url: str, username: str) -> Client:
    if (home / "keyfile.json").exists():
        return await Client.open(home, DEMO_PASSWORD)
    return await Client.create_account(
        home, server_url=url, username=username, password=DEMO_PASSWORD
    )


async def _echo_bot(bot: Client) -> None:
    events = bot.subscribe()
    while True:
        event = await events.get()
        if isinstance(event, MessageReceived) and event.message.direction == "in":
            await bot.send_text(event.message.sender, f"echo: {event.message.body}")


async def run(args: argparse.Namespace, session: Session) -> int:
    out = session.out
    keep = args.data is not None
    data = args.data or Path(tempfile.mkdtemp(prefix="bisik-demo-"))
    server = EmbeddedServer(ServerConfig(data_dir=data / "server"), port=args.port or None)
    await server.start()
    url = server.url
    you = bot = None
    bot_task = None
    try:
        you = await _account(data / "you", url, "you")
        bot = await _account(data / "echo", url, "echo")
        await bot.connect()
        bot_task = asyncio.create_task(_echo_bot(bot))
        out.emit(
            {"event": "demo", "server": url, "data": str(data)},
            "Bisik demo\n"
            f"  server : {url} (SQLite in {data / 'server'})\n"
            "  you    : 'you' (profile password 'demo'), chatting with 'echo', a bot that replies\n"
            "  others : in another terminal, make a second account and message 'you' or 'echo':\n"
            f"           bisik --home /tmp/alice account create --server {url} --username alice\n"
            "           bisik --home /tmp/alice chat echo",
        )
        return await run_chat(you, "echo", out, expect_replies=not sys.stdin.isatty())
    finally:
        if bot_task is not None:
            bot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bot_task
        for client in (you, bot):
            if client is not None:
                await client.close()
        await server.stop()
        if not keep:
            shutil.rmtree(data, ignore_errors=True)
