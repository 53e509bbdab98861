"""What `bisik` leaves on disk: server data and client profiles readable by their
owner only; a key file it cannot use is a clear error, not a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bisik.client import Client, ProfileError
from bisik.crypto import KeyFile
from bisik.server import free_port
from tests.conftest import FAST_KDF
from tests.integration.test_cli import (
    CLI_ENV,
    cli_accounts,
    lines,
    run,
    start_server,
    stop_server,
)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, inherited by the subprocesses: the modes must not rely on a stricter one."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, str]:
    """``relative path -> octal mode`` of ``root`` and everything under it."""
    found = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.stat().st_mode))
    return found


def _loose(root: Path) -> dict[str, str]:
    """What is not ``0700`` (directories) or ``0600`` (files) under ``root``."""
    return {
        name: mode
        for name, mode in _modes(root).items()
        if mode != ("0o700" if (root / name).is_dir() else "0o600")
    }


def test_server_data_and_profiles_are_private(tmp_path: Path, umask_022: None) -> None:
    port = free_port()
    data = tmp_path / "server"
    server = start_server(data, port)
    try:
        alice, _ = cli_accounts(f"http://127.0.0.1:{port}", tmp_path, "alice", "bob")
        photo = tmp_path / "note.txt"
        photo.write_text("an attachment")
        sent = run(*alice, "send", "bob", "--file", str(photo), env=CLI_ENV)
        assert sent.returncode == 0, sent.stderr
        assert lines(sent)[-1]["state"] == "sent"
        assert list((data / "blobs").rglob("*"))  # a blob directory and file were written
        assert (data / "bisik.sqlite3-wal").exists()
        assert _loose(data) == {}
    finally:
        stop_server(server)
    assert _loose(data) == {}
    for name in ("alice", "bob"):
        assert (tmp_path / name / "bisik.db").exists()
        assert _loose(tmp_path / name) == {}

    invite_data = tmp_path / "invites"
    minted = run("server", "invite", "--data", str(invite_data), env=CLI_ENV)
    assert minted.returncode == 0, minted.stderr
    assert _loose(invite_data) == {}


def _profile_with(home: Path, **params: int) -> None:
    """A key file whose KDF parameters were changed (by hand, or by a bug)."""
    home.mkdir(mode=0o700)
    keyfile = json.loads(KeyFile.wrap(os.urandom(32), "pw", FAST_KDF).to_json())
    keyfile.update(params)
    (home / "keyfile.json").write_text(json.dumps(keyfile))


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"time_cost": 0}, "time_cost"),
        ({"time_cost": -1}, "time_cost"),
        ({"parallelism": 0}, "parallelism"),
        ({"memory_cost_kib": 1}, "memory_cost_kib"),
        ({"memory_cost_kib": 2**40}, "memory_cost_kib"),
        ({"parallelism": 2**25}, "parallelism"),
    ],
)
def test_out_of_range_kdf_parameters_are_a_clear_error(
    tmp_path: Path, params: dict[str, int], named: str
) -> None:
    home = tmp_path / "profile"
    _profile_with(home, **params)
    with pytest.raises(ProfileError, match=named):
        asyncio.run(Client.open(home, "pw"))
    shown = run("--home", str(home), "account", "info", env={**CLI_ENV, "BISIK_PASSWORD": "pw"})
    assert shown.returncode == 1
    assert "Traceback" not in shown.stderr
    assert shown.stderr.startswith("error: ") and named in shown.stderr, shown.stderr
