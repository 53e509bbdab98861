"""The client's synchronous core without a server or an event loop: two devices,
each a real ``LocalStore`` and ``OlmMachine``; one encrypts with ``Encryptor``,
the other opens with ``Opener``, and what lands in the timeline is checked."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bisik.client import (
    ClientError,
    DecryptionFailed,
    ManualClock,
    MessageChanged,
    MessagesExpired,
    ReceiptUpdated,
    StoreMisuse,
)
from bisik.client._core import Encryptor, Inbound, Opener, parse_envelope
from bisik.client._group_receive import GroupReceiver
from bisik.client._group_store import GroupStore, Member
from bisik.client._models import (
    DeviceStamp,
    Event,
    GroupPlaintext,
    Message,
    RoomKeyContent,
    new_message_id,
)
from bisik.client._signals import Signals
from bisik.client._store import LocalStore, StoredDevice
from bisik.client._timeline import Timeline
from bisik.crypto import MegolmOutbound, OlmMachine


@dataclass
class Device:
    """One device's sync core, wired as the client facade wires it."""

    username: str
    device_id: str
    store: LocalStore
    machine: OlmMachine
    timeline: Timeline
    opener: Opener
    encryptor: Encryptor
    groups: GroupStore | None = None
    emitted: list[Event] = field(default_factory=list)
    next_id: int = 1

    @property
    def stored(self) -> StoredDevice:
        return StoredDevice(
            self.username, self.device_id, self.machine.curve25519, self.machine.ed25519, "id"
        )

    def envelopes_for(self, peer: Device, **content: Any) -> list[dict[str, Any]]:
        """Encrypt ``content`` for ``peer``'s device, as the server would push it."""
        made = self.encryptor.envelopes([peer.stored], **content)
        out = []
        for env in made:
            out.append(
                {
                    "id": self.next_id,
                    "sender": self.username,
                    "sender_device": self.device_id,
                    "type": env["type"],
                    "body": env["body"],
                    "seq": self.next_id,
                }
            )
            self.next_id += 1
        return out

    def open(self, sender: Device, envelopes: list[dict[str, Any]]) -> list[str]:
        run = []
        for env in envelopes:
            parsed = parse_envelope(env)
            assert parsed is not None
            run.append(Inbound(parsed, sender.stored))
        opened = self.opener.open_run(run, set())
        for o in opened:
            self.emitted += o.events
            if o.failed is not None:
                self.emitted.append(o.failed)
        return [o.outcome for o in opened]


def make_device(tmp: Path, username: str, clock: ManualClock) -> Device:
    store = LocalStore.open(tmp / f"{username}.db", os.urandom(32))
    key = os.urandom(32)
    device_id = f"{username.upper()}DEV"
    with store.transaction():
        machine = OlmMachine.create(key, store)
        store.set_meta("username", username)
    me = DeviceStamp(username=username, device_id=device_id, ed25519=machine.ed25519)
    timeline = Timeline(store, me, clock, tmp)
    groups = GroupStore(store)
    receiver = GroupReceiver(store, groups, timeline, me, key, clock)
    device = Device(
        username, device_id, store, machine, timeline, None, Encryptor(store, machine, me)
    )  # type: ignore[arg-type]
    device.groups = groups
    signals = Signals(store, username, device.emitted.append, clock)
    device.opener = Opener(store, machine, me, timeline, receiver, signals, clock)
    return device


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Device, Device, ManualClock]]:
    clock = ManualClock()
    alice = make_device(tmp_path, "alice", clock)
    bob = make_device(tmp_path, "bob", clock)
    with bob.store.transaction():
        keys = bob.machine.generate_one_time_keys(1)
        bob.machine.mark_keys_as_published()
    with alice.store.transaction():
        alice.machine.create_outbound_session(bob.machine.curve25519, keys[0]["key"])
    yield alice, bob, clock
    alice.store.close()
    bob.store.close()


def text(clock: ManualClock, body: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "id": new_message_id(), "sent_at": clock(), "body": body, **extra}


def test_a_text_is_opened_stored_and_not_opened_twice(
    pair: tuple[Device, Device, ManualClock],
) -> None:
    alice, bob, clock = pair
    envelopes = alice.envelopes_for(bob, **text(clock, "hi bob"))
    assert bob.open(alice, envelopes + envelopes) == ["received", "duplicate"]
    [message] = bob.timeline.history("@alice", 10, None)
    assert (message.body, message.sender, message.direction) == ("hi bob", "alice", "in")
    assert bob.store.is_processed(parse_envelope(envelopes[0]).key)  # type: ignore[union-attr]


def test_a_bad_envelope_is_recorded_and_the_next_one_still_opens(
    pair: tuple[Device, Device, ManualClock],
) -> None:
    alice, bob, clock = pair
    first = alice.envelopes_for(bob, **text(clock, "one"))
    garbled = [{**first[0], "id": 99, "body": first[0]["body"][:-8] + "AAAAAAAA"}]
    second = alice.envelopes_for(bob, **text(clock, "two"))
    assert bob.open(alice, first + garbled + second) == ["received", "rejected", "received"]
    assert [m.body for m in bob.timeline.history("@alice", 10, None)] == ["one", "two"]
    [failed] = [e for e in bob.emitted if isinstance(e, DecryptionFailed)]
    assert failed.envelope_id == 99


def test_content_for_another_device_is_rejected(
    pair: tuple[Device, Device, ManualClock],
) -> None:
    alice, bob, clock = pair
    made = alice.encryptor.envelopes([bob.stored], **text(clock, "hi"))
    # The same ciphertext, claimed by a device that did not encrypt it.
    impostor = StoredDevice("mallory", "MDEV", alice.machine.curve25519, "x" * 43, "id")
    parsed = parse_envelope(
        {"id": 1, "sender": "mallory", "sender_device": "MDEV", "type": made[0]["type"]}
        | {"body": made[0]["body"]}
    )
    assert parsed is not None
    [opened] = bob.opener.open_run([Inbound(parsed, impostor)], set())
    assert opened.outcome == "rejected"
    assert opened.failed is not None and "another sender" in opened.failed.reason
    assert bob.timeline.history("@alice", 10, None) == []


def test_only_the_sender_edits_and_a_receipt_reaches_our_message(
    pair: tuple[Device, Device, ManualClock],
) -> None:
    alice, bob, clock = pair
    hello = text(clock, "helo")
    bob.open(alice, alice.envelopes_for(bob, **hello))
    edit = {"kind": "edit", "target": hello["id"], "target_sender": "alice", "body": "hello"}
    clock.advance(5)
    action = {"type": "action", "id": new_message_id(), "sent_at": clock(), "action": edit}
    assert bob.open(alice, alice.envelopes_for(bob, **action)) == ["control"]
    [changed] = [e for e in bob.emitted if isinstance(e, MessageChanged)]
    assert (changed.kind, changed.message.body) == ("edited", "hello")
    assert bob.timeline.edits(hello["id"]) == [("helo", clock())]

    # Bob's own message, then a read receipt for it from alice.
    reply = new_message_id()
    with bob.store.transaction():
        bob.timeline.rows.insert_message(
            Message(reply, "@alice", "bob", "BOBDEV", "out", "hi", clock(), clock(), 1, "sent")
        )
    receipt = {"kind": "read", "ids": [reply], "conversation": "@alice"}
    control = {"type": "receipt", "id": new_message_id(), "sent_at": clock(), "receipt": receipt}
    assert bob.open(alice, alice.envelopes_for(bob, **control)) == ["control"]
    [updated] = [e for e in bob.emitted if isinstance(e, ReceiptUpdated)]
    assert (updated.username, updated.kind, updated.message_ids) == ("alice", "read", [reply])


def test_targets_leave_out_this_device_and_need_the_peer(
    pair: tuple[Device, Device, ManualClock],
) -> None:
    alice, bob, _ = pair
    lists = {"bob": [bob.stored], "alice": [alice.stored]}
    assert alice.encryptor.targets_among("bob", "all", lists) == [bob.stored]
    assert alice.encryptor.targets_among("bob", "own", {"alice": [alice.stored]}) == []
    with pytest.raises(ClientError, match="no verified device"):
        alice.encryptor.targets_among("bob", "all", {"bob": [], "alice": [alice.stored]})


def test_a_store_write_outside_a_transaction_is_refused(tmp_path: Path) -> None:
    store = LocalStore.open(tmp_path / "x.db", os.urandom(32))
    with pytest.raises(StoreMisuse, match="outside a transaction"):
        store.set_meta("k", "v")
    with store.transaction():
        store.set_meta("k", "v")
    assert store.get_meta("k") == "v"
    store.close()


async def test_a_transaction_that_awaits_is_caught_when_another_task_writes(
    tmp_path: Path,
) -> None:
    store = LocalStore.open(tmp_path / "x.db", os.urandom(32))
    inside = asyncio.Event()

    async def awaits_inside() -> None:
        with store.transaction():
            store.set_meta("a", "1")
            inside.set()
            await asyncio.sleep(0.05)  # what the rule forbids

    async def writes_meanwhile() -> None:
        await inside.wait()
        with pytest.raises(StoreMisuse):
            store.set_meta("b", "2")
        with pytest.raises(StoreMisuse, match="another task"), store.transaction():
            pass

    await asyncio.gather(awaits_inside(), writes_meanwhile())
    assert store.get_meta("a") == "1" and store.get_meta("b") is None
    store.close()


def test_a_group_message_opens_with_its_shared_key_once(
    pair: tuple[Device, Device, ManualClock],
) -> None:
    alice, bob, clock = pair
    assert bob.groups is not None
    with bob.store.transaction():
        members = [Member("alice", "admin", clock()), Member("bob", "member", clock())]
        bob.groups.save_membership("G1", 1, members, True, clock())
    session = MegolmOutbound.create()
    shared = RoomKeyContent(
        group_id="G1", session_id=session.session_id, key=session.session_key(),
        owner=DeviceStamp(username="alice", device_id="ALICEDEV", ed25519=alice.machine.ed25519),
    )  # fmt: skip
    room_key = {"type": "room_key", "id": new_message_id(), "sent_at": clock()}
    assert bob.open(alice, alice.envelopes_for(bob, **room_key, room_key=shared)) == ["control"]

    content = GroupPlaintext(
        type="text", id=new_message_id(), group_id="G1", sent_at=clock(), body="hi all",
        sender=DeviceStamp(username="alice", device_id="ALICEDEV", ed25519=alice.machine.ed25519),
    )  # fmt: skip
    body = session.encrypt(content.model_dump_json().encode())
    env = {"id": 50, "sender": "alice", "sender_device": "ALICEDEV", "type": 0, "body": body}
    megolm = {**env, "kind": "megolm", "group_id": "G1"}
    assert bob.open(alice, [megolm]) == ["received"]
    assert [m.body for m in bob.timeline.history("#G1", 10, None)] == ["hi all"]
    # The same ciphertext again under a new envelope id: a replay, refused.
    assert bob.open(alice, [{**megolm, "id": 51}]) == ["rejected"]
    # Moved to another group by the server: refused too (its session is G1's).
    with bob.store.transaction():
        bob.groups.save_membership("G2", 1, members, True, clock())
    again = session.encrypt(content.model_dump_json().encode())
    assert bob.open(alice, [{**megolm, "id": 52, "group_id": "G2", "body": again}]) == ["rejected"]


def test_a_disappearing_message_goes_when_its_time_comes(
    pair: tuple[Device, Device, ManualClock],
) -> None:
    alice, bob, clock = pair
    gone = text(clock, "soon gone", expires_in=30_000)
    bob.open(alice, alice.envelopes_for(bob, **gone))
    assert bob.timeline.expire_now() == []  # unread: its timer has not started
    with bob.store.transaction():
        bob.timeline.rows.mark_read("@alice", [gone["id"]], clock())
    clock.advance(29)
    assert bob.timeline.expire_now() == []
    clock.advance(2)
    assert bob.timeline.expire_now() == [MessagesExpired("@alice", [gone["id"]])]
    assert bob.timeline.history("@alice", 10, None) == []


def test_ciphertext_sizes_show_only_a_size_bucket(
    pair: tuple[Device, Device, ManualClock],
) -> None:
    alice, bob, clock = pair

    def size(body: str) -> int:
        [env] = alice.envelopes_for(bob, **text(clock, body))
        return len(env["body"])

    assert size("k") == size("ok, see you at ten")  # 1 and 18 characters
    assert size("a" * 150) == size("a" * 200)
    assert size("a" * 1200) == size("a" * 1500)
    assert len({size("a" * n) for n in range(0, 3000, 50)}) <= 6
    # And padding changes nothing for the receiver.
    assert bob.open(alice, alice.envelopes_for(bob, **text(clock, "padded"))) == ["received"]
    assert bob.timeline.history("@alice", 10, None)[-1].body == "padded"
