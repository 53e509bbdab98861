"""Disappearing messages and message actions, with real clients and server:
timers on a controllable clock, server purge, secure deletion, and actions
that receiving devices accept or refuse."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from sqlalchemy import func, select

from bisik.client import (
    Client,
    ClientError,
    ManualClock,
    MessageChanged,
    MessageReceived,
    MessagesExpired,
    TimerChanged,
)
from bisik.client._models import ActionContent
from bisik.crypto import KeyFile
from bisik.server.stores.schema import envelopes, messages
from tests._internals import forge_action
from tests.conftest import PASSWORD, ClientFactory, RunningServer, next_event
from tests.integration.test_groups import linked, until

SECOND = 1000
PAGE = 4096
RESERVE = 80  # SQLCipher 4: 16-byte IV + 64-byte HMAC-SHA512 per page


def refusals(caplog: pytest.LogCaptureFixture, kind: str, actor: str) -> int:
    """How many actions of ``kind`` from ``actor`` a client refused (it logs each)."""
    prefix = f"refused a {kind} from {actor}:"
    return sum(
        r.name == "bisik.client.timeline" and r.getMessage().startswith(prefix)
        for r in caplog.records
    )


async def received(inbox: asyncio.Queue[object], body: str) -> str:
    """The next message (timer notes are skipped) must be ``body``."""
    event = await next_event(inbox, MessageReceived)
    while event.message.kind == "timer":
        event = await next_event(inbox, MessageReceived)
    assert event.message.body == body
    return str(event.message.id)


def bodies(client: Client, peer: str) -> list[str]:
    return [m.body for m in client.history(peer)]


def decrypted_pages(home: Path) -> bytes:
    """Every page of the profile's database and WAL, decrypted (free pages too)."""
    key = KeyFile.from_json((home / "keyfile.json").read_text()).unlock(PASSWORD)
    raw = key.derive("database")

    def page(data: bytes, first: bool) -> bytes:
        iv = data[PAGE - RESERVE : PAGE - RESERVE + 16]
        body = data[16 if first else 0 : PAGE - RESERVE]
        decryptor = Cipher(algorithms.AES(raw), modes.CBC(iv)).decryptor()
        return decryptor.update(body) + decryptor.finalize()

    out = []
    db = (home / "bisik.db").read_bytes()
    for offset in range(0, len(db), PAGE):
        out.append(page(db[offset : offset + PAGE], offset == 0))
    wal_path = home / "bisik.db-wal"
    wal = wal_path.read_bytes() if wal_path.exists() else b""
    for offset in range(32, len(wal) - PAGE + 1, 24 + PAGE):
        frame = wal[offset + 24 : offset + 24 + PAGE]
        number = int.from_bytes(wal[offset : offset + 4], "big")
        out.append(page(frame, number == 1))
    return b"".join(out)


async def test_timer_counts_from_sending_and_from_reading(make_client: ClientFactory) -> None:
    a_clock, b_clock = ManualClock(), ManualClock()
    alice = await make_client("alice", clock=a_clock)
    bob = await make_client("bob", clock=b_clock)
    b_in = bob.subscribe()
    alice.set_timer("bob", 30)
    changed = await next_event(b_in, TimerChanged)
    assert (changed.username, changed.expires_in) == ("alice", 30 * SECOND)
    assert bob.timer("alice") == 30 * SECOND
    note = "alice set disappearing messages to 30 seconds"
    assert bodies(alice, "bob") == [note]
    await until(lambda: bodies(bob, "alice") == [note])

    message = await alice.send_text("bob", "this will self-destruct")
    await received(b_in, "this will self-destruct")
    mine = alice.history("bob")[-1]
    assert (mine.expires_in, mine.expires_at) == (30 * SECOND, message.sent_at + 30 * SECOND)
    theirs = bob.history("alice")[-1]
    assert theirs.expires_in == 30 * SECOND
    assert theirs.expires_at == theirs.sent_at + 60 * SECOND  # unread: only the hard cap

    a_in = alice.subscribe()
    a_clock.advance(31)
    assert alice.expire_now() == 1
    gone = await next_event(a_in, MessagesExpired)
    assert gone.message_ids == [message.id]
    assert bodies(alice, "bob") == [note]

    b_clock.advance(20)
    assert bob.expire_now() == 0
    bob.mark_read("alice")  # the timer starts now: 30 s from t+20
    assert bob.history("alice")[-1].expires_at == b_clock.now + 30 * SECOND
    b_clock.advance(29)
    assert bob.expire_now() == 0
    b_clock.advance(2)
    assert bob.expire_now() == 1
    assert bodies(bob, "alice") == [note]

    alice.set_timer("bob", None)
    await until(lambda: bob.timer("alice") is None)
    plain = await alice.send_text("bob", "this one stays")
    assert alice.history("bob")[-1].expires_in is None
    await received(b_in, "this one stays")
    a_clock.advance(3600)
    b_clock.advance(3600)
    assert alice.expire_now() == bob.expire_now() == 0
    assert bodies(bob, "alice")[-1] == "this one stays" and plain.id
    with pytest.raises(ClientError, match="timer"):
        alice.set_timer("bob", 42)


async def test_unread_messages_go_at_the_hard_cap(make_client: ClientFactory) -> None:
    alice = await make_client("alice")
    b_clock = ManualClock()
    bob = await make_client("bob", clock=b_clock)
    b_in = bob.subscribe()
    alice.set_timer("bob", 300)
    await next_event(b_in, TimerChanged)
    await alice.send_text("bob", "read me in time")
    await received(b_in, "read me in time")
    b_clock.advance(599)
    assert bob.expire_now() == 0
    b_clock.advance(2)
    assert bob.expire_now() == 1
    assert "read me in time" not in bodies(bob, "alice")


async def test_a_device_online_after_expiry_never_shows_it(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    b_clock = ManualClock()
    bob = await make_client("bob", connect=False, clock=b_clock)
    alice.set_timer("bob", 30)
    gone = await alice.send_text("bob", "too late for bob")
    await alice.wait_sent(gone.id, timeout=10)
    b_clock.advance(61)
    b_in = bob.subscribe()
    await bob.connect()
    await asyncio.wait_for(bob.synced.wait(), 10)
    await asyncio.sleep(0.2)
    shown = [e for e in _drain(b_in) if isinstance(e, MessageReceived)]
    assert [e.message.body for e in shown] == ["alice set disappearing messages to 30 seconds"]
    assert "too late for bob" not in bodies(bob, "alice")


def _drain(queue: asyncio.Queue[object]) -> list[object]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def message_rows(server: RunningServer) -> tuple[int, int, int]:
    """(messages, disappearing messages, envelopes) stored on the server."""
    async with server.services.engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(messages))).scalar_one()
        timed = (
            await conn.execute(
                select(func.count()).select_from(messages).where(messages.c.expires_at.is_not(None))
            )
        ).scalar_one()
        envs = (await conn.execute(select(func.count()).select_from(envelopes))).scalar_one()
    return int(total), int(timed), int(envs)


async def test_server_purges_expired_and_old_envelopes(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob", connect=False)
    plain = await alice.send_text("bob", "ordinary")
    await alice.wait_sent(plain.id, timeout=10)
    alice.set_timer("bob", 30)
    timed = await alice.send_text("bob", "disappearing")
    await alice.wait_sent(timed.id, timeout=10)
    before = await message_rows(server)
    assert before[1] == 1 and before[2] >= 3
    store = server.services.messages._messages
    server_now = int(time.time() * 1000)
    assert await store.purge(server_now, 30 * 86400 * SECOND, 48 * 3600 * SECOND) == (0, 0)
    # Past the hard cap (twice the timer): the disappearing message and its envelopes go.
    gone, dropped = await store.purge(
        server_now + 61 * SECOND, 30 * 86400 * SECOND, 48 * 3600 * SECOND
    )
    assert gone == 1 and dropped >= 1
    after = await message_rows(server)
    assert after[1] == 0 and after[2] == before[2] - dropped
    # Past the retention: every undelivered envelope and its message record go.
    gone, dropped = await store.purge(
        server_now + 31 * 86400 * SECOND, 30 * 86400 * SECOND, 48 * 3600 * SECOND
    )
    assert await message_rows(server) == (0, 0, 0)

    b_in = bob.subscribe()
    await bob.connect()
    await asyncio.wait_for(bob.synced.wait(), 10)
    assert [e for e in _drain(b_in) if isinstance(e, MessageReceived)] == []


async def test_delivered_disappearing_messages_leave_the_server(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    b_in = bob.subscribe()
    alice.set_timer("bob", 30)
    await next_event(b_in, TimerChanged)
    await alice.send_text("bob", "delivered and gone")
    await received(b_in, "delivered and gone")

    async def no_timed_rows() -> bool:
        return (await message_rows(server))[1] == 0

    async with asyncio.timeout(10):
        while not await no_timed_rows():
            await asyncio.sleep(0.05)


async def test_expired_plaintext_is_gone_from_the_database_file(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    alice = await make_client("alice")
    b_clock = ManualClock()
    bob = await make_client("bob", clock=b_clock)
    b_in = bob.subscribe()
    alice.set_timer("bob", 30)
    await next_event(b_in, TimerChanged)
    canary = "canary-7f3e the vault code is 9-4-1-7"
    await alice.send_text("bob", canary)
    await received(b_in, canary)
    home = tmp_path / "homes" / "bob"
    # The check can see plaintext: before expiry the canary is in the decrypted pages.
    assert canary.encode() in decrypted_pages(home)
    b_clock.advance(61)
    assert bob.expire_now() == 1
    assert canary.encode() not in decrypted_pages(home)
    assert not (home / "bisik.db-wal").exists() or (home / "bisik.db-wal").stat().st_size == 0


async def test_reply_react_edit_and_delete_for_everyone(make_client: ClientFactory) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    a_in, b_in = alice.subscribe(), bob.subscribe()
    question = await alice.send_text("bob", "lunch?")
    await received(b_in, "lunch?")
    answer = await bob.send_text("alice", "yes, at 1", reply_to=question.id)
    await received(a_in, "yes, at 1")
    assert alice.history("bob")[-1].reply_to == question.id

    bob.react(question.id, "👍")
    changed = await next_event(a_in, MessageChanged)
    assert (changed.kind, changed.message.reactions) == ("reaction", {"bob": "👍"})
    bob.react(question.id, "❤️")
    alice.react(question.id, "🎉")
    for client in (alice, bob):
        await until(
            lambda c=client: (
                c.history((c.username == "alice" and "bob") or "alice")[0].reactions
                == {"bob": "❤️", "alice": "🎉"}
            )
        )
    bob.react(question.id, "")
    await until(lambda: alice.history("bob")[0].reactions == {"alice": "🎉"})

    edited = alice.edit(question.id, "lunch at 12?")
    assert edited.body == "lunch at 12?" and edited.edited_at is not None
    await until(lambda: bob.history("alice")[0].body == "lunch at 12?")
    assert bob.history("alice")[0].edited_at == edited.edited_at
    assert [text for text, _ in bob.edits(question.id)] == ["lunch?"]
    with pytest.raises(ClientError, match="own"):
        bob.edit(question.id, "bob's words in alice's mouth")

    alice.delete_message(question.id, everyone=True)
    await until(lambda: bob.history("alice")[0].deleted)
    deleted = bob.history("alice")[0]
    assert deleted.deleted and deleted.body == "" and deleted.reactions is None
    assert bob.edits(question.id) == []
    assert answer.id in [m.id for m in alice.history("bob")]


async def test_forged_and_late_actions_are_refused(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    a_clock = ManualClock()
    alice = await make_client("alice", clock=a_clock)
    bob = await make_client("bob")
    a_in, b_in = alice.subscribe(), bob.subscribe()
    original = await alice.send_text("bob", "the meeting is at 3")
    await received(b_in, "the meeting is at 3")
    # bob's client would refuse; a modified client sends the edit anyway.
    forged = ActionContent(
        kind="edit", target=original.id, target_sender="alice", body="the meeting is cancelled"
    )
    forge_action(bob, "@alice", forged)
    marker = await bob.send_text("alice", "after the forged edit")
    await received(a_in, "after the forged edit")
    assert marker.id
    assert alice.history("bob")[0].body == "the meeting is at 3"
    assert refusals(caplog, "edit", "bob") == 1  # alice's client refused it
    # alice herself, 25 hours later (a clock that lies to her own client's checks).
    with pytest.raises(ClientError, match="24 hours"):
        a_clock.advance(25 * 3600)
        alice.edit(original.id, "too late")
    late = ActionContent(kind="delete", target=original.id, target_sender="alice")
    forge_action(alice, "@bob", late)
    marker = await alice.send_text("bob", "after the late delete")
    await received(b_in, "after the late delete")
    assert bob.history("alice")[0].body == "the meeting is at 3"
    assert refusals(caplog, "delete", "alice") == 1  # bob's client refused it


async def test_actions_converge_on_every_device(make_client: ClientFactory, tmp_path: Path) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    laptop = await linked(alice, tmp_path / "alice-laptop")
    l_in, b_in = laptop.subscribe(), bob.subscribe()
    message = await alice.send_text("bob", "draft")
    await received(b_in, "draft")
    await received(l_in, "draft")
    alice.edit(message.id, "final")
    bob.react(message.id, "👀")
    laptop.react(message.id, "✅")
    alice.set_timer("bob", 3600)

    def state(client: Client) -> tuple[str, dict[str, str] | None, int | None]:
        first = client.history("bob" if client.username == "alice" else "alice")[0]
        return (
            first.body,
            first.reactions,
            client.timer("bob" if client.username == "alice" else "alice"),
        )

    expected = ("final", {"bob": "👀", "alice": "✅"}, 3600 * SECOND)
    for client in (alice, laptop, bob):
        await until(lambda c=client: state(c) == expected)  # type: ignore[misc]
    laptop.delete_message(message.id)  # for me: all of alice's devices
    await until(lambda: "final" not in bodies(alice, "bob"))
    assert "final" in bodies(bob, "alice")
    await laptop.close()


async def test_group_timer_and_actions(make_client: ClientFactory) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    c_clock = ManualClock()
    carol = await make_client("carol", clock=c_clock)
    c_in = carol.subscribe()
    group = await alice.create_group("Secret", ["bob", "carol"])
    await until(lambda: any(g.name == "Secret" for g in bob.groups()))
    bob.set_timer("#Secret", 3600)  # any member may
    await until(lambda: carol.groups() != [] and carol.timer(f"#{group.group_id}") == 3600 * SECOND)
    sent = await alice.send_text("#Secret", "group secret")
    await received(c_in, "group secret")
    assert carol.history(f"#{group.group_id}")[-1].expires_in == 3600 * SECOND
    carol.react(sent.id, "🔥")
    await until(lambda: alice.history("#Secret")[-1].reactions == {"carol": "🔥"})
    alice.edit(sent.id, "group secret, edited")
    await until(lambda: bodies(bob, "#Secret")[-1] == "group secret, edited")
    c_clock.advance(2 * 3600 + 1)
    assert carol.expire_now() == 1
    assert "group secret, edited" not in bodies(carol, "#Secret")
