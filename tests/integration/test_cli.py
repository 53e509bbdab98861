"""The `bisik` command as a user runs it: a server subprocess and CLI subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bisik.server import free_port

BISIK = [sys.executable, "-m", "bisik.cli"]


def run(
    *args: str, env: dict[str, str], input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BISIK, *args], env=env, input=input, capture_output=True, text=True, timeout=60
    )


def lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


CLI_ENV = {**os.environ, "BISIK_PASSWORD": "cli password"}


def cli_accounts(server: str, tmp_path: Path, *names: str) -> list[list[str]]:
    """Create an account per name, each in its own home; returns each one's
    ``--home ... --json`` arguments."""
    homes = []
    for name in names:
        home = ["--home", str(tmp_path / name), "--json"]
        made = run(*home, "account", "create", "--server", server, "--username", name, env=CLI_ENV)
        assert made.returncode == 0, made.stderr
        homes.append(home)
    return homes


def start_server(data: Path, port: int) -> subprocess.Popen[bytes]:
    """`bisik server` in a subprocess, once it answers its health check."""
    proc = subprocess.Popen(
        [*BISIK, "server", "--data", str(data), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            proc.wait()
            raise RuntimeError("server did not start")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(15)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = start_server(tmp_path / "server", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


def test_two_users_chat_through_the_cli(server_process: str, tmp_path: Path) -> None:
    env = {**os.environ, "BISIK_PASSWORD": "cli password"}
    alice = ["--home", str(tmp_path / "alice"), "--json"]
    bob = ["--home", str(tmp_path / "bob"), "--json"]
    created = run(
        *alice, "account", "create", "--server", server_process, "--username", "alice", env=env
    )
    assert created.returncode == 0, created.stderr
    assert lines(created)[0]["username"] == "alice"
    assert (
        run(
            *bob, "account", "create", "--server", server_process, "--username", "bob", env=env
        ).returncode
        == 0
    )

    for text in ("first", "second", "third"):
        sent = run(*alice, "send", "bob", text, env=env)
        assert sent.returncode == 0, sent.stderr
        assert lines(sent)[-1]["state"] == "sent"

    received = run(*bob, "receive", env=env)
    assert received.returncode == 0, received.stderr
    assert [m["body"] for m in lines(received)] == ["first", "second", "third"]
    # Shown once: a second receive has nothing new.
    assert lines(run(*bob, "receive", env=env)) == []

    assert run(*bob, "send", "alice", "hello alice", env=env).returncode == 0
    history = run(*alice, "history", "bob", env=env)
    assert history.returncode == 0
    # alice's history shows her own messages; the reply arrives when she connects.
    assert [m["body"] for m in lines(history)] == ["first", "second", "third"]
    got = run(*alice, "receive", env=env)
    assert [m["body"] for m in lines(got)] == ["hello alice"]
    history = lines(run(*alice, "history", "bob", env=env))
    assert [(m["direction"], m["body"]) for m in history] == [
        ("out", "first"),
        ("out", "second"),
        ("out", "third"),
        ("in", "hello alice"),
    ]


def test_cli_errors_are_clear(server_process: str, tmp_path: Path) -> None:
    env = {**os.environ, "BISIK_PASSWORD": "pw"}
    home = ["--home", str(tmp_path / "carol")]
    bad = run(
        *home, "account", "create", "--server", server_process, "--username", "Carol", env=env
    )
    assert bad.returncode == 1
    assert "usernames are 3-32 characters" in bad.stderr
    assert (
        run(
            *home, "account", "create", "--server", server_process, "--username", "carol", env=env
        ).returncode
        == 0
    )
    unknown = run(*home, "send", "nobody", "hi", env=env)
    assert unknown.returncode == 1
    assert "unknown_user" in unknown.stderr
    wrong = run(*home, "history", "x", env={**env, "BISIK_PASSWORD": "not it"})
    assert wrong.returncode == 1
    assert "wrong password" in wrong.stderr
    missing = run("--home", str(tmp_path / "nobody-here"), "receive", env=env)
    assert missing.returncode == 1
    assert "no profile" in missing.stderr


def test_send_while_server_is_down_is_queued(tmp_path: Path) -> None:
    """No server at all: the message waits in the outbox, nothing is lost."""
    env = {**os.environ, "BISIK_PASSWORD": "pw"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path / "server", port)
    try:
        for name in ("dave", "erin"):
            home = str(tmp_path / name)
            created = run(
                "--home", home, "account", "create", "--server", url, "--username", name, env=env
            )
            assert created.returncode == 0
    finally:
        stop_server(server)
    queued = run("--home", str(tmp_path / "dave"), "--json", "send", "erin", "kept", env=env)
    assert queued.returncode == 0
    assert lines(queued)[-1]["event"] == "queued"

    server = start_server(tmp_path / "server", port)
    try:
        assert run("--home", str(tmp_path / "dave"), "receive", env=env).returncode == 0
        got = run("--home", str(tmp_path / "erin"), "--json", "receive", env=env)
        assert [m["body"] for m in lines(got)] == ["kept"]
    finally:
        stop_server(server)


def test_demo_runs_without_a_terminal() -> None:
    proc = subprocess.run(
        [*BISIK, "demo"],
        input="hello echo\nhow are you\n",
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert "echo: echo: hello echo" in proc.stdout
    assert "echo: echo: how are you" in proc.stdout


def test_link_devices_verify_and_recover_through_the_cli(
    server_process: str, tmp_path: Path
) -> None:
    env = {**os.environ, "BISIK_PASSWORD": "pw"}
    laptop = ["--home", str(tmp_path / "laptop"), "--json"]
    phone = ["--home", str(tmp_path / "phone"), "--json"]
    bob = ["--home", str(tmp_path / "bob"), "--json"]
    created = run(
        *laptop, "account", "create", "--server", server_process, "--username", "alice", env=env
    )
    recovery_key = lines(created)[0]["recovery_key"]
    assert isinstance(recovery_key, str)
    assert (
        run(
            *bob, "account", "create", "--server", server_process, "--username", "bob", env=env
        ).returncode
        == 0
    )
    assert run(*laptop, "send", "bob", "sent before linking", env=env).returncode == 0

    new = subprocess.Popen(
        [*BISIK, *phone, "link", "new", "--server", server_process, "--name", "phone"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert new.stdout is not None
        code = json.loads(new.stdout.readline())["code"]
        approved = run(*laptop, "link", "approve", code, "--yes", env=env)
        assert approved.returncode == 0, approved.stderr
        out, err = new.communicate(timeout=60)
    finally:
        if new.poll() is None:
            new.kill()
            new.communicate()
    assert new.returncode == 0, err
    shown_new = [json.loads(x) for x in out.splitlines() if x.strip()]
    shown_old = lines(approved)
    assert shown_new[0]["decimals"] == shown_old[0]["decimals"]
    assert shown_new[-1]["event"] == "linked"
    assert [m["body"] for m in lines(run(*phone, "history", "bob", env=env))] == [
        "sent before linking"
    ]
    devices = lines(run(*phone, "devices", env=env))
    assert {d["name"] for d in devices} >= {"phone"}
    assert len(devices) == 2

    number = lines(run(*bob, "verify", "alice", env=env))[0]["safety_number"]
    marked = lines(run(*phone, "verify", "bob", "--mark", env=env))[0]
    assert marked["safety_number"] == number
    assert marked["verified"] is True

    gone = next(d["device_id"] for d in devices if not d["current"])
    assert run(*phone, "devices", "remove", gone, env=env).returncode == 0
    refused = run(*laptop, "receive", env=env)
    assert refused.returncode == 1

    restored = run(
        "--home",
        str(tmp_path / "new-phone"),
        "--json",
        "account",
        "recover",
        "--server",
        server_process,
        "--username",
        "alice",
        env={**env, "BISIK_RECOVERY_KEY": recovery_key},
    )
    assert restored.returncode == 0, restored.stderr
    assert lines(restored)[-1]["event"] == "recovered"


def test_settings_receipts_and_read_state_through_the_cli(
    server_process: str, tmp_path: Path
) -> None:
    env = {**os.environ, "BISIK_PASSWORD": "pw"}
    alice = ["--home", str(tmp_path / "alice"), "--json"]
    bob = ["--home", str(tmp_path / "bob"), "--json"]
    for who, name in ((alice, "alice"), (bob, "bob")):
        created = run(
            *who, "account", "create", "--server", server_process, "--username", name, env=env
        )
        assert created.returncode == 0, created.stderr
    assert lines(run(*bob, "settings", env=env))[0] == {
        "presence": True,
        "typing": True,
        "read_receipts": True,
    }
    off = lines(run(*bob, "settings", "--typing", "off", env=env))[0]
    assert off["typing"] is False and off["presence"] is True

    assert run(*alice, "send", "bob", "are you there?", env=env).returncode == 0
    assert run(*bob, "receive", env=env).returncode == 0  # bob's device sends "delivered"
    assert run(*bob, "history", "alice", env=env).returncode == 0  # shown = read
    events = lines(run(*alice, "receive", "--wait", "1", env=env))
    assert lines(run(*alice, "history", "bob", env=env))[-1]["state"] == "read"
    assert all(e.get("event") != "message" for e in events)
