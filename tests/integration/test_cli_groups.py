"""`bisik group ...` and `#group` addressing, as a user runs them."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_cli import CLI_ENV, cli_accounts, lines, run, server_process

__all__ = ["server_process"]


def test_groups_through_the_cli(server_process: str, tmp_path: Path) -> None:
    env = CLI_ENV
    ann, ben, cat = cli_accounts(server_process, tmp_path, "ann", "ben", "cat")

    made = run(*ann, "group", "create", "Climbing", "--members", "ben", env=env)
    assert made.returncode == 0, made.stderr
    group = lines(made)[-1]
    assert group["name"] == "Climbing"
    assert [(m["username"], m["role"]) for m in group["members"]] == [
        ("ann", "admin"),
        ("ben", "member"),
    ]
    sent = run(*ann, "send", "#Climbing", "gym at 6?", env=env)
    assert sent.returncode == 0, sent.stderr
    assert lines(sent)[-1]["state"] == "sent"

    got = lines(run(*ben, "receive", env=env))
    assert [(m["body"], m["conversation"]) for m in got] == [("gym at 6?", f"#{group['group_id']}")]
    listed = lines(run(*ben, "group", "list", env=env))
    assert [(g["name"], g["group_id"]) for g in listed] == [("Climbing", group["group_id"])]

    # Only admins manage members; errors are clear and the exit code says so.
    refused = run(*ben, "group", "add", "#Climbing", "cat", env=env)
    assert refused.returncode == 1
    assert lines(refused)[-1]["code"] == "not_an_admin"

    assert run(*ann, "group", "add", "#Climbing", "cat", env=env).returncode == 0
    assert run(*ann, "group", "promote", "#Climbing", "ben", env=env).returncode == 0
    assert run(*ben, "group", "rename", "#Climbing", "Bouldering", env=env).returncode == 0
    assert run(*ben, "send", "#Bouldering", "welcome cat", env=env).returncode == 0
    got = lines(run(*cat, "receive", env=env))
    assert [m["body"] for m in got] == ["welcome cat"]  # nothing from before cat joined
    info = lines(run(*cat, "group", "info", "#Bouldering", env=env))[-1]
    assert [(m["username"], m["role"]) for m in info["members"]] == [
        ("ann", "admin"),
        ("ben", "admin"),
        ("cat", "member"),
    ]
    history = lines(run(*cat, "history", "#Bouldering", env=env))
    assert [(m["sender"], m["body"]) for m in history] == [("ben", "welcome cat")]

    assert run(*ben, "group", "remove", "#Bouldering", "cat", env=env).returncode == 0
    assert run(*cat, "group", "leave", "#Bouldering", env=env).returncode == 1
    assert run(*ann, "group", "leave", "#Bouldering", env=env).returncode == 0
    assert lines(run(*ann, "group", "list", env=env)) == []
    missing = run(*ann, "send", "#Nowhere", "hello?", env=env)
    assert missing.returncode == 1
    assert "no group" in missing.stderr


def test_group_chat(server_process: str, tmp_path: Path) -> None:
    env = CLI_ENV
    ann, ben = cli_accounts(server_process, tmp_path, "ann", "ben")
    assert run(*ann, "group", "create", "Band", "--members", "ben", env=env).returncode == 0
    assert run(*ann, "send", "#Band", "rehearsal friday", env=env).returncode == 0
    chat = run(*ben, "chat", "#Band", env=env, input="count me in\n/quit\n")
    assert chat.returncode == 0, chat.stderr
    shown = lines(chat)
    assert [m["body"] for m in shown if m.get("event") == "message"] == ["rehearsal friday"]
    assert [m["body"] for m in shown if m.get("event") == "sent"] == ["count me in"]
    got = lines(run(*ann, "receive", env=env))
    assert [(m["sender"], m["body"]) for m in got] == [("ben", "count me in")]
