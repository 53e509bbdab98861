"""`bisik timer/react/edit/delete` and `send --reply`, as a user runs them."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_cli import CLI_ENV, cli_accounts, lines, run, server_process

__all__ = ["server_process"]


def test_actions_through_the_cli(server_process: str, tmp_path: Path) -> None:
    env = CLI_ENV
    ann, ben = cli_accounts(server_process, tmp_path, "ann", "ben")

    timer = run(*ann, "timer", "ben", "1h", env=env)
    assert timer.returncode == 0, timer.stderr
    assert lines(timer)[-1]["seconds"] == 3600
    sent = lines(run(*ann, "send", "ben", "see you at 5", env=env))[-1]
    assert sent["expires_in"] == 3600 * 1000 and sent["expires_at"] is not None
    got = lines(run(*ben, "receive", env=env))
    assert [(m["kind"], m["body"]) for m in got] == [
        ("timer", "ann set disappearing messages to 1 hour"),
        ("text", "see you at 5"),
    ]
    assert got[1]["expires_in"] == 3600 * 1000

    assert run(*ben, "react", sent["id"], "👍", env=env).returncode == 0
    reply = run(*ben, "send", "ann", "ok!", "--reply", sent["id"], env=env)
    assert reply.returncode == 0, reply.stderr
    assert run(*ann, "edit", sent["id"], "see you at 6", env=env).returncode == 0
    not_mine = run(*ben, "edit", sent["id"], "never", env=env)
    assert not_mine.returncode == 1 and "own" in not_mine.stderr

    run(*ann, "receive", env=env)
    history = lines(run(*ann, "history", "ben", env=env))
    first, answer = history[1], history[2]
    assert (first["body"], first["reactions"]) == ("see you at 6", {"ben": "👍"})
    assert first["edited_at"] is not None
    assert (answer["body"], answer["reply_to"]) == ("ok!", sent["id"])

    assert run(*ann, "delete", sent["id"], "--everyone", env=env).returncode == 0
    run(*ben, "receive", env=env)
    theirs = lines(run(*ben, "history", "ann", env=env))
    assert [(m["body"], m["deleted"]) for m in theirs[1:2]] == [("", True)]

    bad = run(*ann, "timer", "ben", "42s", env=env)
    assert bad.returncode == 1 and "timer" in bad.stderr
    assert run(*ann, "timer", "ben", "off", env=env).returncode == 0
    plain = lines(run(*ann, "send", "ben", "no timer now", env=env))[-1]
    assert plain["expires_in"] is None


def test_view_once_through_the_cli(server_process: str, tmp_path: Path) -> None:
    env = CLI_ENV
    ann, ben = cli_accounts(server_process, tmp_path, "ann", "ben")
    photo = tmp_path / "once.txt"
    photo.write_text("for your eyes only")
    sent = run(*ann, "send", "ben", "--view-once", str(photo), env=env)
    assert sent.returncode == 0, sent.stderr
    got = lines(run(*ben, "receive", env=env))
    assert [(m["view_once"], m["attachment"]["name"]) for m in got] == [(True, "once.txt")]
    first = run(*ben, "download", got[0]["id"], env=env)
    assert first.returncode == 0, first.stderr
    saved = Path(lines(first)[-1]["path"])
    assert saved.read_text() == "for your eyes only"
    again = run(*ben, "download", got[0]["id"], env=env)
    assert again.returncode == 1 and "already opened" in again.stderr
