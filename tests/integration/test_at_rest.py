"""What a thief gets: the server's database, data directory and logs, or a client's
files without its password. None of them may hold a message's plaintext."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select

from bisik.client import Client, MessageReceived, ProfileError, WrongPassword
from bisik.crypto import KdfParams, KeyFile
from tests import _internals as internals
from tests.conftest import PASSWORD, ClientFactory, RunningServer, next_event

CANARIES = [
    "canary-7f3a9c1e the vault code is 0451",
    "canary-b2d8e4f0 meet me by the old mill at dawn",
    "canary-ünïcødé-😀 ещё одна строка",
]


def file_bytes(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def server_rows(server: RunningServer) -> dict[str, list[str]]:
    """Every row of every table of the server's database, as text."""
    engine = server.services.engine
    meta = MetaData()
    async with engine.connect() as conn:
        await conn.run_sync(meta.reflect)
        return {
            table.name: [repr(tuple(row)) for row in (await conn.execute(select(table))).all()]
            for table in meta.sorted_tables
        }


async def test_canary_no_plaintext_on_server_or_in_client_files(
    make_client: ClientFactory,
    server: RunningServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    alice = await make_client("alice")
    bob = await make_client("bob")
    b_in, a_in = bob.subscribe(), alice.subscribe()
    for text in CANARIES:
        await alice.send_text("bob", text)
        assert (await next_event(b_in, MessageReceived)).message.body == text
        await bob.send_text("alice", f"re: {text}")
        assert (await next_event(a_in, MessageReceived)).message.body == f"re: {text}"
    # One message stays queued on the server (bob is offline).
    await bob.close()
    queued = await alice.send_text("bob", CANARIES[0] + " (queued)")
    await alice.wait_sent(queued.id, timeout=10)
    await asyncio.sleep(0.2)

    needles = [c.encode() for c in CANARIES] + [PASSWORD.encode()]
    tables = await server_rows(server)
    # The queued ciphertext for bob is there (with any receipts still queued for
    # him): the search below looks where it is.
    assert len(tables["envelopes"]) >= 1
    rows = "\n".join(r for table in tables.values() for r in table)
    for canary in CANARIES:
        assert canary not in rows
    assert PASSWORD not in rows

    for path, data in file_bytes(server.config.data_dir).items():
        for needle in needles:
            assert needle not in data, f"plaintext in {path}"
    logs = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    for canary in CANARIES:
        assert canary not in logs
    assert PASSWORD not in logs

    homes = tmp_path / "homes"
    for path, data in file_bytes(homes).items():
        assert not data.startswith(b"SQLite format 3"), f"{path} is a plain SQLite file"
        for needle in needles:
            assert needle not in data, f"plaintext in {path}"
    for home in (homes / "alice", homes / "bob"):
        with pytest.raises(sqlite3.DatabaseError):
            sqlite3.connect(home / "bisik.db").execute("SELECT * FROM sqlite_master").fetchall()


async def test_secrets_never_print(make_client: ClientFactory) -> None:
    alice = await make_client("alice")
    identity = internals.identity(alice)
    store, machine = internals.local_store(alice), internals.machine(alice)
    text = repr(alice) + repr(machine) + repr(identity) + repr(store)
    secret = identity.private_bytes()
    from bisik.crypto import b64encode

    assert b64encode(secret) not in text
    assert secret.hex() not in text
    assert PASSWORD not in text


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


async def test_wrong_password_is_clear_and_changes_nothing(
    server: RunningServer, tmp_path: Path
) -> None:
    home = tmp_path / "alice"
    client = await Client.create_account(
        home, server_url=server.url, username="alice", password="right one", kdf=KdfParams()
    )
    await client.close()
    before = digest_tree(home)
    with pytest.raises(WrongPassword):
        await Client.open(home, "wrong one")
    assert digest_tree(home) == before
    reopened = await Client.open(home, "right one")
    assert reopened.username == "alice"
    with pytest.raises(ProfileError, match="in use"):
        await Client.open(home, "right one")
    await reopened.close()


async def test_change_password_rewraps_only(server: RunningServer, tmp_path: Path) -> None:
    home = tmp_path / "alice"
    client = await Client.create_account(
        home, server_url=server.url, username="alice", password="old password"
    )
    old_keyfile = KeyFile.from_json((home / "keyfile.json").read_text())
    with pytest.raises(WrongPassword):
        client.change_password("not the old one", "new password")
    client.change_password("old password", "new password")
    await client.close()
    new_keyfile = KeyFile.from_json((home / "keyfile.json").read_text())
    assert new_keyfile.salt != old_keyfile.salt
    # Same master key, so the database (keyed from it) is not re-encrypted.
    assert old_keyfile.unlock("old password").derive("database") == new_keyfile.unlock(
        "new password"
    ).derive("database")
    with pytest.raises(WrongPassword):
        await Client.open(home, "old password")
    reopened = await Client.open(home, "new password")
    assert reopened.username == "alice"
    await reopened.close()


async def test_failed_registration_leaves_no_profile(
    make_client: ClientFactory, server: RunningServer, tmp_path: Path
) -> None:
    await make_client("alice", connect=False)
    home = tmp_path / "second-alice"
    from bisik.client import ProtocolError

    with pytest.raises(ProtocolError) as err:
        await Client.create_account(home, server_url=server.url, username="alice", password="pw")
    assert err.value.code == "username_taken"
    assert not (home / "keyfile.json").exists()
    assert not (home / "bisik.db").exists()
