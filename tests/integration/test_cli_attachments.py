"""`bisik send USER --file`, `bisik download MSGID`, `history --json` with attachment metadata."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from tests.integration.test_cli import lines, run, server_process

__all__ = ["server_process"]


def test_send_a_file_and_download_it_through_the_cli(server_process: str, tmp_path: Path) -> None:
    env = {**os.environ, "BISIK_PASSWORD": "cli password"}
    alice = ["--home", str(tmp_path / "alice"), "--json"]
    bob = ["--home", str(tmp_path / "bob"), "--json"]
    for who, name in ((alice, "alice"), (bob, "bob")):
        made = run(
            *who, "account", "create", "--server", server_process, "--username", name, env=env
        )
        assert made.returncode == 0, made.stderr

    photo = tmp_path / "photo.png"
    Image.new("RGB", (30, 20), (200, 10, 10)).save(photo)
    sent = run(*alice, "send", "bob", "--file", str(photo), "--caption", "look", env=env)
    assert sent.returncode == 0, sent.stderr
    out = lines(sent)[-1]
    assert (out["state"], out["body"], out["attachment"]["name"]) == ("sent", "look", "photo.png")

    got = lines(run(*bob, "receive", env=env))
    assert len(got) == 1
    meta = got[0]["attachment"]
    assert (meta["kind"], meta["mime"], meta["width"], meta["height"]) == (
        "image",
        "image/png",
        30,
        20,
    )
    assert meta["blurhash"] and meta["has_thumbnail"] is True
    assert "key" not in meta

    history = lines(run(*bob, "history", "alice", env=env))
    assert history[-1]["attachment"]["blurhash"] == meta["blurhash"]

    target = tmp_path / "saved.png"
    fetched = run(*bob, "download", got[0]["id"], "--out", str(target), env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert lines(fetched)[-1]["path"] == str(target)
    with Image.open(target) as image:
        assert image.size == (30, 20)

    missing = run(*bob, "download", "no-such-message", env=env)
    assert missing.returncode == 1
    nothing = run(*alice, "send", "bob", env=env)
    assert nothing.returncode == 1 and "nothing to send" in nothing.stderr
