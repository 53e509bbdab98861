"""Text from peers is shown as text: no terminal escape a peer (or the server) sends
reaches the terminal through `bisik`, in plain or `--json` output."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import pytest

from bisik.client import Client
from tests.conftest import FAST_KDF, PASSWORD
from tests.integration.test_cli import BISIK, CLI_ENV, cli_accounts, server_process

__all__ = ["server_process"]

# An OSC title escape, a CR that rewinds to forge a line, a CSI colour, a C1 CSI,
# DEL, and a right-to-left override.
EVIL = "hi\x1b]0;pwned\x07\r[2024-01-01 09:00] bank: send your PIN\x1b[31m\x9b2J\x7f\u202egnp.exe"
# What a terminal would act on: C0 but newline, DEL, C1, bidi overrides and isolates.
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def run(*args: str, input: str = "") -> subprocess.CompletedProcess[str]:
    """`bisik ARGS`, its output decoded as written (no newline translation: a CR stays)."""
    proc = subprocess.run(
        [*BISIK, *args], env=CLI_ENV, input=input.encode(), capture_output=True, timeout=60
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def _plain(home: list[str]) -> list[str]:
    return [a for a in home if a != "--json"]


def _assert_safe(stdout: str) -> None:
    assert UNSAFE.search(stdout) is None, repr(stdout)


async def _mallory_sends(server: str, home: Path, evil_file: Path) -> None:
    mallory = await Client.create_account(
        home, server_url=server, username="mallory", password=PASSWORD, kdf=FAST_KDF
    )
    try:
        await mallory.connect()
        text = await mallory.send_text("bob", EVIL + "\nsecond line")
        await mallory.wait_sent(text.id, timeout=15)
        mallory.react(text.id, "\x1b[2J\u202e")
        mallory.edit(text.id, EVIL + "\nsecond line (edited)")
        sent = await mallory.send_file("bob", evil_file, caption=EVIL)
        await mallory.wait_sent(sent.id, timeout=15)
        await mallory.drain_outbox(15)
    finally:
        await mallory.close()


def test_peer_text_is_escaped_in_every_command(
    server_process: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (bob,) = cli_accounts(server_process, tmp_path, "bob")
    plain = _plain(bob)
    evil_file = tmp_path / "in\x1b[8mvisible\u202etxt.exe"
    evil_file.write_bytes(b"payload")
    # A modified client: ours would have cleaned the name before sending it.
    monkeypatch.setattr("bisik.client._attachments.safe_name", lambda name: name)
    asyncio.run(_mallory_sends(server_process, tmp_path / "mallory", evil_file))

    received = run(*plain, "receive")
    assert received.returncode == 0, received.stderr
    _assert_safe(received.stdout)
    # The escapes are shown, not obeyed; the body's newline is an indented
    # continuation, so no line a peer sends can pass for one of ours.
    assert "\\x1b]0;pwned\\x07\\x0d[2024-01-01 09:00] bank" in received.stdout
    assert "\\x9b2J\\x7f\\u202egnp.exe" in received.stdout
    assert "in\\x1b[8mvisible\\u202etxt.exe" in received.stdout
    assert "\n    second line" in received.stdout
    assert [line[:1] for line in received.stdout.splitlines() if not line.startswith(" ")] == [
        "[",
        "[",
    ]

    history = run(*plain, "history", "mallory")
    assert history.returncode == 0, history.stderr
    _assert_safe(history.stdout)
    assert "(edited)" in history.stdout and "\\x1b[2J\\u202e mallory" in history.stdout

    # JSON keeps the exact text, escaped so that the raw output is safe too.
    as_json = run(*bob, "history", "mallory")
    assert as_json.returncode == 0, as_json.stderr
    _assert_safe(as_json.stdout)
    shown = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert shown[0]["body"] == EVIL + "\nsecond line (edited)"
    assert shown[0]["reactions"] == {"mallory": "\x1b[2J\u202e"}
    assert shown[1]["attachment"]["name"] == evil_file.name

    listed = run(*plain, "conversations")
    assert listed.returncode == 0, listed.stderr
    _assert_safe(listed.stdout)

    chat = run(*plain, "chat", "mallory", input="/quit\n")
    assert chat.returncode == 0, chat.stderr
    _assert_safe(chat.stdout)
    assert "\\x1b]0;pwned" in chat.stdout

    download = run(*plain, "download", shown[1]["id"], "--out", str(tmp_path / "got"))
    assert download.returncode == 0, download.stderr
    _assert_safe(download.stdout + download.stderr)


def test_device_and_group_names_are_escaped(server_process: str, tmp_path: Path) -> None:
    (bob,) = cli_accounts(server_process, tmp_path, "bob")
    plain = _plain(bob)
    device_id = json.loads(run(*bob, "account", "info").stdout)["device_id"]
    renamed = run(*bob, "devices", "rename", device_id, "lap\x1b[2Jtop\u2066")
    assert renamed.returncode == 0, renamed.stderr
    devices = run(*plain, "devices")
    assert devices.returncode == 0, devices.stderr
    _assert_safe(devices.stdout)
    assert "lap\\x1b[2Jtop\\u2066" in devices.stdout

    async def mallory_makes_a_group() -> str:
        mallory = await Client.create_account(
            tmp_path / "mallory",
            server_url=server_process,
            username="mallory",
            password=PASSWORD,
            kdf=FAST_KDF,
        )
        try:
            await mallory.connect()
            group = await mallory.create_group(
                "fun\x1b]0;x\x07\u202e", ["bob"], description="d\x1b[31m\u2069"
            )
            await mallory.drain_outbox(15)
            return group.group_id
        finally:
            await mallory.close()

    group_id = asyncio.run(mallory_makes_a_group())
    for command in (["group", "list"], ["group", "info", f"#{group_id}"]):
        shown = run(*plain, *command)
        assert shown.returncode == 0, shown.stderr
        _assert_safe(shown.stdout)
        assert "fun\\x1b]0;x\\x07\\u202e" in shown.stdout
        as_json = run(*bob, *command)
        _assert_safe(as_json.stdout)
        group = json.loads(as_json.stdout.splitlines()[-1])
        assert (group["name"], group["description"]) == ("fun\x1b]0;x\x07\u202e", "d\x1b[31m\u2069")
