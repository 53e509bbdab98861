"""The SDK's local store: batched per-message lookups, the device memo, message ids."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlcipher3

from bisik.client import ProfileError, _timeline_store
from bisik.client._models import Message, new_message_id
from bisik.client._store import LocalStore, StoredDevice
from bisik.client._timeline_store import Extras, TimelineStore
from bisik.client._transfer import AccountExport


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    opened = LocalStore.open(tmp_path / "local.db", os.urandom(32))
    yield opened
    opened.close()


def _page_hmac(store: LocalStore) -> str:
    return str(store.execute("PRAGMA cipher_hmac_algorithm").fetchone()[0])


def test_a_new_database_authenticates_pages_with_sha256_and_rejects_other_keys(
    tmp_path: Path,
) -> None:
    key = os.urandom(32)
    store = LocalStore.open(tmp_path / "local.db", key)
    with store.transaction():
        store.set_meta("username", "alice")
    assert _page_hmac(store) == "HMAC_SHA256"
    store.close()
    with pytest.raises(ProfileError, match="does not open"):
        LocalStore.open(tmp_path / "local.db", os.urandom(32))
    reopened = LocalStore.open(tmp_path / "local.db", key)
    assert (reopened.get_meta("username"), _page_hmac(reopened)) == ("alice", "HMAC_SHA256")
    reopened.close()


def test_a_database_made_with_sqlcipher_defaults_still_opens_as_it_is(tmp_path: Path) -> None:
    # Profiles created before the SHA-256 page MAC: SQLCipher 4's HMAC-SHA512.
    key = os.urandom(32)
    path = tmp_path / "local.db"
    conn = sqlcipher3.connect(str(path), isolation_level=None)
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('username', 'bob'), ('schema_version', '5')")
    conn.close()
    store = LocalStore.open(path, key)
    assert (store.get_meta("username"), _page_hmac(store)) == ("bob", "HMAC_SHA512")
    with store.transaction():
        store.set_meta("username", "bobby")  # still written in its own format
    store.close()
    with pytest.raises(ProfileError, match="does not open"):
        LocalStore.open(path, os.urandom(32))
    reopened = LocalStore.open(path, key)
    assert (reopened.get_meta("username"), _page_hmac(reopened)) == ("bobby", "HMAC_SHA512")
    reopened.close()


def test_message_ids_never_look_like_command_line_options() -> None:
    # One plain token_urlsafe in 64 starts with "-": 3,000 would all but surely show one.
    ids = {new_message_id() for _ in range(3000)}
    assert len(ids) == 3000
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)


def test_per_message_lookups_cover_every_key_across_statements(store: LocalStore) -> None:
    rows = TimelineStore(store)
    keys = [(f"u{i % 3}", f"m{i}") for i in range(1000)]  # more than one statement's worth
    with store.transaction():
        for sender, message_id in keys[::7]:
            rows.put_attachment(sender, message_id, f'{{"n": "{message_id}"}}', None)
        for at, (sender, message_id) in enumerate(keys[::5]):
            store.execute(
                "INSERT INTO message_extras (sender, message_id, kind, reply_to) "
                "VALUES (?, ?, ?, ?)",
                (sender, message_id, "text", f"r-{message_id}"),
            )
            for reactor, emoji in (("zed", "a"), ("amy", "b")):
                store.execute(
                    "INSERT INTO reactions VALUES (?, ?, ?, ?, ?)",
                    (sender, message_id, reactor, emoji, at * 2 + (reactor == "amy")),
                )
        # Same message id from another sender: not theirs.
        rows.put_attachment("stranger", "m0", '{"n": "other"}', None)

    attachments = rows.attachments_of(keys)
    assert set(attachments) == set(keys[::7])
    assert attachments[("u0", "m0")] == '{"n": "m0"}'
    extras = rows.extras_of(keys)
    assert set(extras) == set(keys[::5])
    assert extras[("u2", "m5")] == Extras(kind="text", reply_to="r-m5")
    reactions = rows.reactions_of(keys)
    assert set(reactions) == set(keys[::5])
    assert list(reactions[("u1", "m10")].items()) == [("zed", "a"), ("amy", "b")]  # oldest first
    assert rows.attachments_of([]) == {} and rows.reactions_of([("u0", "m1")]) == {}
    assert list(rows.extras_of([("u2", "m5")])) == [("u2", "m5")]  # one key: its own statement
    three = [("u1", "m10"), ("u0", "m15"), ("u1", "m10")]  # padded to a fixed size
    assert set(rows.reactions_of(three)) == {("u1", "m10"), ("u0", "m15")}


def _device(name: str, device_id: str, curve: str) -> StoredDevice:
    return StoredDevice(name, device_id, curve, f"ed-{curve}", f"id-{name}")


def test_device_memo_follows_replaced_lists_and_rollbacks(store: LocalStore) -> None:
    store.replace_devices("bob", [_device("bob", "D1", "c1")], 1)
    assert store.device("bob", "D1") == _device("bob", "D1", "c1")
    store.replace_devices("bob", [_device("bob", "D2", "c2")], 2)
    assert store.device("bob", "D1") is None  # removed from the list: not remembered
    assert store.device("bob", "D2") == _device("bob", "D2", "c2")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.transaction():
        store.replace_devices("bob", [_device("bob", "D3", "c3")], 3)
        assert store.device("bob", "D3") is not None  # seen inside the transaction
        raise Boom
    assert store.device("bob", "D3") is None  # rolled back: gone from the memo too
    assert store.device("bob", "D2") == _device("bob", "D2", "c2")


def _mine(rows: TimelineStore, message_id: str, to: str, state: str) -> None:
    rows.insert_message(Message(message_id, f"@{to}", "me", "D0", "out", "hi", 1, 1, None, state))


def test_receipts_count_for_our_messages_to_that_user_and_only_move_forward(
    store: LocalStore,
) -> None:
    rows = TimelineStore(store)
    with store.transaction():
        store.set_meta("username", "me")
        for i in range(450):  # two statements' worth
            _mine(rows, f"s{i}", "bob", "sent")
        _mine(rows, "pending", "bob", "pending")
        _mine(rows, "to-carol", "carol", "sent")
        _mine(rows, "read-already", "bob", "read")
        rows.insert_message(Message("theirs", "@bob", "bob", "B1", "in", "yo", 1, 1, 1, "received"))
    ids = [f"s{i}" for i in range(450)] + ["pending", "to-carol", "read-already", "theirs", "s0"]
    with store.transaction():
        ours = rows.add_receipt(ids, "bob", "B1", "delivered", 5)
    assert ours == [f"s{i}" for i in range(450)] + ["pending", "read-already"]
    state = dict(store.execute("SELECT id, state FROM messages").fetchall())
    assert {state[f"s{i}"] for i in range(450)} == {"delivered"}
    assert (state["pending"], state["to-carol"], state["read-already"]) == (
        "pending",
        "sent",
        "read",
    )
    assert rows.receipts("s449") == [("bob", "B1", "delivered", 5)]
    assert rows.receipts("to-carol") == [] and rows.receipts("theirs") == []
    with store.transaction():
        assert rows.add_receipt(["s1"], "bob", "B1", "read", 6) == ["s1"]
        rows.add_receipt(["s1"], "bob", "B1", "delivered", 7)  # late: no step back
    assert store.execute("SELECT state FROM messages WHERE id = 's1'").fetchone()[0] == "read"


def _plans(store: LocalStore, sql: str) -> list[str]:
    rows = store.execute("EXPLAIN QUERY PLAN " + sql, (None,) * sql.count("?")).fetchall()
    return [str(r[3]) for r in rows]


def test_receipts_and_marking_read_find_messages_by_key_not_by_walking_the_chat(
    store: LocalStore,
) -> None:
    # Each of these ran once per receipt or per message read, and walked the whole
    # conversation through messages_conversation: a quarter of a busy sender's CPU.
    mine = _timeline_store._OUR_MESSAGES_TO.format("?, ?")
    statements = [
        f"SELECT id {mine}",
        f"INSERT OR IGNORE INTO receipts SELECT id, ?, ?, ?, ? {mine}",
        f"UPDATE messages SET state = ? WHERE rowid IN (SELECT rowid {mine})",
        "UPDATE messages SET read_at = ? WHERE conversation = ? AND id = ? "
        "AND direction = 'in' AND read_at IS NULL RETURNING sender",
    ]
    for sql in statements:
        plan = _plans(store, sql)
        assert not [p for p in plan if "messages_conversation" in p or p.startswith("SCAN")], (
            sql,
            plan,
        )
        assert any("(sender=? AND id=?)" in p or "(conversation=? AND id=?)" in p for p in plan)


def test_mark_read_marks_each_unread_once_and_starts_disappearing_timers(
    store: LocalStore,
) -> None:
    rows = TimelineStore(store)
    with store.transaction():
        for i in range(5):
            rows.insert_message(
                Message(f"b{i}", "@bob", "bob", "B1", "in", "x", 1, 1, i, "received")
            )
        rows.insert_message(Message("c0", "@carol", "carol", "C1", "in", "x", 1, 1, 9, "received"))
        store.execute(
            "INSERT INTO message_extras (sender, message_id, expires_in, hard_expire_at) "
            "VALUES ('bob', 'b1', 30, 1000)"
        )
    assert rows.unread("@bob") == [("bob", f"b{i}") for i in range(5)]
    with store.transaction():
        assert rows.mark_read("@bob", ["b1", "b3", "b1", "c0", "nope"], 100) == ["b1", "b3"]
        assert rows.mark_read("@bob", ["b1"], 200) == []  # already read
    assert rows.unread("@bob") == [("bob", "b0"), ("bob", "b2"), ("bob", "b4")]
    assert rows.unread_counts() == {"@bob": 3, "@carol": 1}
    expire_at = store.execute("SELECT expire_at FROM message_extras WHERE message_id = 'b1'")
    assert expire_at.fetchone()[0] == 130  # min(read at + expires_in, hard_expire_at)
    with store.transaction():
        rows.mark_all_read(300)
    assert rows.unread_counts() == {} and rows.unread("@carol") == []


def test_history_for_the_account_transfer_is_the_documented_json(store: LocalStore) -> None:
    rows = TimelineStore(store)
    bodies = ['say "hi"\\n', "tab\there\nnew line", "Zoë 🦊 \u2028", "\x01 control", "x" * 300]
    with store.transaction():
        for i, body in enumerate(bodies):
            rows.insert_message(
                Message(f"m{i}", "@bob", "bob", "B1", "in", body, 1000 + i, 2000 + i, i, "received")
            )
        rows.insert_message(Message("old", "@bob", "me", "D0", "out", "old", 10, 10, 1, "sent"))
        rows.insert_message(
            Message("p", "@bob", "me", "D0", "out", "p", 5000, 5000, None, "pending")
        )
        rows.insert_message(Message("gone", "@bob", "me", "D0", "out", "g", 5001, 5001, 2, "sent"))
        store.execute(
            "INSERT INTO message_extras (sender, message_id, expires_in) VALUES ('me', 'gone', 5)"
        )
    history = [json.loads(text) for text in rows.history_since(500, 100)]
    assert history == [
        {
            "id": f"m{i}",
            "conversation": "@bob",
            "sender": "bob",
            "sender_device": "B1",
            "direction": "in",
            "body": body,
            "sent_at": 1000 + i,
            "received_at": 2000 + i,
            "server_seq": i,
            "state": "received",
        }
        for i, body in enumerate(bodies)
    ]  # oldest first; not too old, not pending, not disappearing
    assert [json.loads(t)["id"] for t in rows.history_since(500, 2)] == ["m3", "m4"]
    transfer = AccountExport({"v": 1, "contacts": []}, rows.history_since(500, 2)).to_json()
    assert json.loads(transfer) == {"v": 1, "contacts": [], "history": history[3:]}
    assert json.loads(AccountExport({"v": 1}, []).to_json()) == {"v": 1, "history": []}
