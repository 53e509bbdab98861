"""Groups: membership, Megolm messages, rotation, late joiners, key requests,
replays and the server's membership checks, with real clients and server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select

from bisik.client import (
    Client,
    ClientError,
    DecryptionFailed,
    LocalGroup,
    MessageReceived,
    MessageWaiting,
    Synced,
)
from bisik.client._models import DeviceStamp, GroupPlaintext, RoomKeyContent
from bisik.crypto import MegolmInbound, MegolmOutbound
from bisik.proto import ErrorCode, ProtocolError
from bisik.server.stores.schema import devices, envelopes, messages, users
from tests._internals import devices as device_directory
from tests._internals import group_store, pickle_key, send_olm_control, stamp
from tests.conftest import (
    FAST_KDF,
    PASSWORD,
    ClientFactory,
    RunningServer,
    next_event,
    now_ms,
)
from tests.integration.test_devices import link


async def linked(existing: Client, home: Path, history_days: int = 30) -> Client:
    device = await link(existing, home, history_days=history_days)
    await device.connect()
    await asyncio.wait_for(device.synced.wait(), 10)
    return device


async def group_bodies(inbox: asyncio.Queue[object], count: int) -> list[str]:
    bodies = []
    while len(bodies) < count:
        event = await next_event(inbox, MessageReceived)
        assert event.message.conversation.startswith("#")
        bodies.append(event.message.body)
    return bodies


def local(client: Client, group_id: str) -> LocalGroup | None:
    """The client's copy of a group it is in, if it knows of it yet."""
    return next((g for g in client.groups() if g.group_id == group_id), None)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def key_refusals(caplog: pytest.LogCaptureFixture, requester: Client) -> int:
    """How many key requests from ``requester``'s device a member refused (it logs each)."""
    who = f"refusing {requester.username}/{requester.device_id} a group key"
    return sum(
        r.name == "bisik.client.groups" and r.getMessage().startswith(who) for r in caplog.records
    )


def drain(queue: asyncio.Queue[object]) -> list[object]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def sent(client: Client, target: str, text: str) -> str:
    message = await client.send_text(target, text)
    assert (await client.wait_sent(message.id, timeout=10)).state == "sent"
    return message.id


async def device_pk(server: RunningServer, client: Client) -> int:
    async with server.services.engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    select(devices.c.id).where(devices.c.device_id == client.device_id)
                )
            ).scalar_one()
        )


async def last_group_message(server: RunningServer, group_id: str) -> int:
    async with server.services.engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    select(messages.c.id)
                    .where(messages.c.group_id == group_id)
                    .order_by(messages.c.id.desc())
                    .limit(1)
                )
            ).scalar_one()
        )


async def deliver_copy(server: RunningServer, message_id: int, to: Client) -> None:
    """What a compromised server can do: hand a stored group message to any device."""
    async with server.services.engine.begin() as conn:
        await conn.execute(
            insert(envelopes).values(
                message_id=message_id,
                recipient_device_pk=await device_pk(server, to),
                kind="megolm",
                type=0,
                body="",
                created_at=0,
            )
        )
    to.resync()


async def test_create_talk_rename_and_history(make_client: ClientFactory) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    carol = await make_client("carol")
    b_in, c_in = bob.subscribe(), carol.subscribe()
    group = await alice.create_group("Hiking", ["bob", "carol"])
    assert [(m.username, m.role) for m in group.members] == [
        ("alice", "admin"),
        ("bob", "member"),
        ("carol", "member"),
    ]
    await sent(alice, "#Hiking", "Saturday at 8?")
    assert await group_bodies(b_in, 1) == ["Saturday at 8?"]
    assert await group_bodies(c_in, 1) == ["Saturday at 8?"]
    # The name came end-to-end encrypted; the server never had it.
    await until(lambda: getattr(local(bob, group.group_id), "name", "") == "Hiking")
    await sent(bob, "#Hiking", "yes!")
    assert await group_bodies(c_in, 1) == ["yes!"]
    a_in = alice.subscribe()
    await sent(carol, f"#{group.group_id}", "me too")
    assert await group_bodies(a_in, 1) == ["me too"]
    for client in (alice, bob, carol):
        await until(lambda c=client: len(c.history("#Hiking")) == 3)  # type: ignore[misc]
        assert [m.body for m in client.history("#Hiking")] == ["Saturday at 8?", "yes!", "me too"]
        assert [m.sender for m in client.history("#Hiking")] == ["alice", "bob", "carol"]

    with pytest.raises(ClientError, match="admin"):
        await bob.rename_group("#Hiking", "Bob's group")
    await alice.rename_group("#Hiking", "Hiking club")
    await until(lambda: getattr(local(carol, group.group_id), "name", "") == "Hiking club")
    assert [g.name for g in bob.groups()] == ["Hiking club"]


async def test_several_devices_per_user(make_client: ClientFactory, tmp_path: Path) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    alice_laptop = await linked(alice, tmp_path / "alice-laptop")
    bob_laptop = await linked(bob, tmp_path / "bob-laptop")
    inboxes = [c.subscribe() for c in (alice_laptop, bob, bob_laptop)]
    await alice.create_group("Family", ["bob"])
    await sent(alice, "#Family", "dinner at 7")
    for inbox in inboxes:
        assert await group_bodies(inbox, 1) == ["dinner at 7"]
    own_copy = alice_laptop.history("#Family")
    assert [(m.body, m.direction) for m in own_copy] == [("dinner at 7", "out")]
    a_in = alice.subscribe()
    await sent(bob_laptop, "#Family", "coming")
    assert await group_bodies(a_in, 1) == ["coming"]
    assert await group_bodies(inboxes[1], 1) == ["coming"]  # bob's other device
    await alice_laptop.close()
    await bob_laptop.close()


async def test_removed_member_reads_nothing_new(
    make_client: ClientFactory, server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    carol = await make_client("carol")
    b_in, c_in = bob.subscribe(), carol.subscribe()
    group = await alice.create_group("Team", ["bob", "carol"])
    await sent(alice, "#Team", "before")
    assert await group_bodies(c_in, 1) == ["before"]
    session_before = group_store(alice).outbound(group.group_id)
    assert session_before is not None

    await alice.remove_member("#Team", "carol")
    await until(lambda: not carol.group(group.group_id).active)
    await sent(alice, "#Team", "after carol left")
    assert await group_bodies(b_in, 2) == ["before", "after carol left"]
    session_after = group_store(alice).outbound(group.group_id)
    assert session_after is not None and session_after.session_id != session_before.session_id

    # Even handed the ciphertext by a compromised server, carol cannot read it:
    # she has no key, and her key request is refused.
    await deliver_copy(server, await last_group_message(server, group.group_id), carol)
    await next_event(c_in, MessageWaiting)
    await asyncio.sleep(0.5)  # time for a (refused) key request and any answer
    # No key came: the message still waits, and nothing new opened.
    assert not any(isinstance(e, MessageReceived) for e in drain(c_in))
    assert carol.waiting_count() == 1
    assert [m.body for m in carol.history(f"#{group.group_id}")] == ["before"]
    with pytest.raises(ClientError, match="no longer a member"):
        await carol.send_text(f"#{group.group_id}", "let me back in")


async def test_member_list_is_built_once_per_version(make_client: ClientFactory) -> None:
    """The server keeps the list it built for a version (after a change every
    member asks for it); every change (add, promote, remove) is seen at once."""
    alice = await make_client("alice")
    await make_client("bob")
    await make_client("carol")
    group = await alice.create_group("Team", ["bob"])

    async def info() -> dict[str, object]:
        return await alice.transport.call("group_info", {"group_id": group.group_id})

    first = await info()
    assert [m["username"] for m in first["members"]] == ["alice", "bob"]  # type: ignore[index]
    await alice.add_members("#Team", ["carol"])
    added = await info()
    assert added["version"] == first["version"] + 1  # type: ignore[operator]
    assert {m["username"] for m in added["members"]} == {"alice", "bob", "carol"}  # type: ignore[index]
    await alice.transport.call("group_promote", {"group_id": group.group_id, "username": "bob"})
    promoted = await info()
    roles = {m["username"]: m["role"] for m in promoted["members"]}  # type: ignore[index]
    assert roles == {"alice": "admin", "bob": "admin", "carol": "member"}
    await alice.remove_member("#Team", "carol")
    assert {m["username"] for m in (await info())["members"]} == {"alice", "bob"}  # type: ignore[index]


async def test_new_member_reads_from_when_added(
    make_client: ClientFactory, server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    dave = await make_client("dave")
    b_in, d_in = bob.subscribe(), dave.subscribe()
    group = await alice.create_group("Book club", ["bob"])
    await sent(alice, "#Book club", "secret plans before dave")
    assert await group_bodies(b_in, 1) == ["secret plans before dave"]
    old_message = await last_group_message(server, group.group_id)

    await alice.add_members("#Book club", ["dave"])
    await sent(alice, "#Book club", "welcome dave")
    assert await group_bodies(d_in, 1) == ["welcome dave"]
    await until(lambda: getattr(local(dave, group.group_id), "name", "") == "Book club")

    # The old message, handed to dave anyway: its key predates him and alice
    # refuses his key request (he was not a member when it was sent).
    await deliver_copy(server, old_message, dave)
    await next_event(d_in, MessageWaiting)
    await until(lambda: key_refusals(caplog, dave) >= 1)  # alice's client refused it
    assert key_refusals(caplog, dave) == 1
    assert dave.waiting_count("#Book club") == 1
    assert [m.body for m in dave.history("#Book club")] == ["welcome dave"]


async def test_lost_key_share_is_recovered_by_key_request(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob", connect=False)
    await alice.create_group("Ops", ["bob"])
    await sent(alice, "#Ops", "deploy at noon")
    # The key share to bob is lost (a server fault); the message itself arrives.
    async with server.services.engine.begin() as conn:
        lost = await conn.execute(
            delete(envelopes).where(
                envelopes.c.recipient_device_pk == await device_pk(server, bob),
                envelopes.c.kind == "olm",
            )
        )
    assert lost.rowcount >= 1
    b_in = bob.subscribe()
    await bob.connect()
    # The message waits for its key; bob asks alice's devices, alice answers (the
    # only way bob can have the key now) and the waiting message opens.
    waiting = await next_event(b_in, MessageWaiting)
    assert (waiting.sender, waiting.sender_device) == ("alice", alice.device_id)
    assert await group_bodies(b_in, 1) == ["deploy at noon"]
    await until(lambda: bob.waiting_count() == 0)
    assert [(m.sender, m.body) for m in bob.history("#Ops")] == [("alice", "deploy at noon")]


async def test_replayed_group_message_is_rejected(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    b_in = bob.subscribe()
    group = await alice.create_group("Replay", ["bob"])
    await sent(alice, "#Replay", "pay bob 10")
    assert await group_bodies(b_in, 1) == ["pay bob 10"]
    await deliver_copy(server, await last_group_message(server, group.group_id), bob)
    failure = await next_event(b_in, DecryptionFailed)
    assert "replayed" in failure.reason
    assert [m.body for m in bob.history("#Replay")] == ["pay bob 10"]


async def test_server_refuses_non_members(make_client: ClientFactory) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    mallory = await make_client("mallory")
    group = await alice.create_group("Private", ["bob"])
    gid = group.group_id
    refused = {
        "group_info": {"group_id": gid},
        "group_send": {"group_id": gid, "client_message_id": "mallory00001", "body": "x:y"},
        "group_add": {"group_id": gid, "usernames": ["mallory"]},
        "group_remove": {"group_id": gid, "username": "bob"},
        "group_promote": {"group_id": gid, "username": "mallory"},
        "group_leave": {"group_id": gid},
    }
    for event, payload in refused.items():
        with pytest.raises(ProtocolError) as info:
            await mallory.transport.call(event, payload)
        assert info.value.code == ErrorCode.NOT_A_MEMBER, event
    # A key request (an Olm envelope about the group) from a non-member.
    envelopes_ = await mallory.encrypt_for(
        "mallorykeyreq1",
        {"to": "alice", "type": "key_request", "sent_at": now_ms(), "scope": "peer"},
    )
    with pytest.raises(ProtocolError) as info:
        await mallory.transport.call(
            "send",
            {"client_message_id": "mallorykeyreq1", "group_id": gid, "envelopes": envelopes_},
        )
    assert info.value.code == ErrorCode.NOT_A_MEMBER
    assert (await mallory.transport.call("group_list", {}))["groups"] == []
    # A member who is not an admin cannot change the membership.
    with pytest.raises(ProtocolError) as info:
        await bob.transport.call("group_add", {"group_id": gid, "usernames": ["mallory"]})
    assert info.value.code == ErrorCode.NOT_AN_ADMIN
    with pytest.raises(ProtocolError) as info:
        await bob.transport.call("group_info", {"group_id": "A" * 22})
    assert info.value.code == ErrorCode.NOT_A_MEMBER
    for bad in ({}, {"group_id": "../etc"}, {"group_id": 5}, {"group_id": gid, "x": 1}):
        with pytest.raises(ProtocolError) as info:
            await bob.transport.call("group_info", bad)
        assert info.value.code == ErrorCode.BAD_REQUEST


async def test_membership_races_converge(make_client: ClientFactory) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    others = [await make_client(name) for name in ("carol", "dave", "erin", "frank")]
    group = await alice.create_group("Race", ["bob", "erin", "frank"])
    await until(lambda: local(bob, group.group_id) is not None)
    await alice.promote("#Race", "bob")
    # Two admins change the membership at the same moment.
    await asyncio.gather(
        alice.add_members(group.group_id, ["carol"]),
        bob.add_members(group.group_id, ["dave"]),
        alice.remove_member(group.group_id, "erin"),
        bob.remove_member(group.group_id, "frank"),
    )
    info = await alice.transport.call("group_info", {"group_id": group.group_id})
    expected = sorted(["alice", "bob", "carol", "dave"])
    assert sorted(m["username"] for m in info["members"]) == expected

    for client in (alice, bob, others[0], others[1]):
        await until(
            lambda c=client: getattr(local(c, group.group_id), "version", 0) == info["version"]
        )  # type: ignore[misc]
        assert sorted(m.username for m in client.group(group.group_id).members) == expected
    for client in others[2:]:
        await until(lambda c=client: local(c, group.group_id) is None)  # type: ignore[misc]
    inboxes = [c.subscribe() for c in (bob, others[0], others[1])]
    await sent(alice, f"#{group.group_id}", "everyone here?")
    for inbox in inboxes:
        assert await group_bodies(inbox, 1) == ["everyone here?"]


async def test_leaving_hands_admin_on(make_client: ClientFactory) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    group = await alice.create_group("Handover", ["bob"])
    await alice.leave_group("#Handover")
    assert not alice.group(group.group_id).active
    assert alice.groups() == []
    await until(
        lambda: (g := local(bob, group.group_id)) is not None and g.role_of("bob") == "admin"
    )
    assert [m.username for m in bob.group(group.group_id).members] == ["bob"]


async def test_revoked_device_rotates_the_session(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    phone = await linked(bob, tmp_path / "bob-phone")
    group = await alice.create_group("Rotate", ["bob"])
    await sent(alice, "#Rotate", "one")
    first = group_store(alice).outbound(group.group_id)
    assert first is not None and len(first.shared_with) == 2
    await bob.remove_device(phone.device_id)
    await asyncio.sleep(0.3)  # the devices_changed notice reaches alice
    await sent(alice, "#Rotate", "two")
    second = group_store(alice).outbound(group.group_id)
    assert second is not None and second.session_id != first.session_id
    assert len(second.shared_with) == 1
    await phone.close()


async def test_new_device_of_a_member_reads_from_when_it_was_added(
    make_client: ClientFactory,
    server: RunningServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    group = await alice.create_group("Devices", ["bob"])
    await sent(alice, "#Devices", "before bob's phone existed")
    old_message = await last_group_message(server, group.group_id)
    await asyncio.sleep(0.01)  # the phone is added strictly later
    # No history handed over by the linking: the phone starts empty.
    phone = await linked(bob, tmp_path / "bob-phone", history_days=0)
    p_in = phone.subscribe()
    await asyncio.sleep(0.3)  # alice hears of bob's new device
    await sent(alice, "#Devices", "hello phone")
    assert await group_bodies(p_in, 1) == ["hello phone"]

    await deliver_copy(server, old_message, phone)
    await next_event(p_in, MessageWaiting)
    await until(lambda: key_refusals(caplog, phone) >= 1)  # alice's client refused it
    assert key_refusals(caplog, phone) == 1
    assert phone.waiting_count() == 1
    assert [m.body for m in phone.history("#Devices")] == ["hello phone"]
    assert phone.group(group.group_id).name == "Devices"  # told with the key share
    await phone.close()


async def test_a_thousand_members_and_no_more(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    names = [f"user{i:04d}" for i in range(1000)]
    async with server.services.engine.begin() as conn:
        await conn.execute(
            insert(users),
            [{"username": n, "identity_key": "A" * 43, "created_at": 0} for n in names],
        )
    info = await alice.transport.call("group_create", {"members": names[:999]})
    assert len(info["members"]) == 1000
    with pytest.raises(ProtocolError) as refused:
        await alice.transport.call(
            "group_add", {"group_id": info["group_id"], "usernames": [names[999]]}
        )
    assert refused.value.code == ErrorCode.TOO_MANY_MEMBERS
    with pytest.raises(ProtocolError) as refused:
        await alice.transport.call("group_create", {"members": names})
    assert refused.value.code == ErrorCode.BAD_REQUEST
    with pytest.raises(ProtocolError) as refused:
        await alice.transport.call("group_create", {"members": ["nobody-here"]})
    assert refused.value.code == ErrorCode.UNKNOWN_USER
    listed = await alice.transport.call("group_list", {})
    assert [g["group_id"] for g in listed["groups"]] == [info["group_id"]]


async def test_forged_key_answers_and_removed_senders_are_refused(
    make_client: ClientFactory, server: RunningServer
) -> None:
    """A member answering a key request on someone else's behalf, and a removed
    member whose messages a compromised server still delivers."""
    alice = await make_client("alice")
    bob = await make_client("bob")
    mallory = await make_client("mallory")
    b_in = bob.subscribe()
    group = await alice.create_group("Trust", ["bob", "mallory"])
    await sent(alice, "#Trust", "hello all")
    assert await group_bodies(b_in, 1) == ["hello all"]
    await until(lambda: local(mallory, group.group_id) is not None)

    # mallory holds alice's session key (she is a member) and forwards it to bob as
    # if it were an answer from alice's account.
    session = group_store(alice).outbound(group.group_id)
    assert session is not None
    await until(lambda: group_store(mallory).inbound(session.session_id) is not None)
    hers = group_store(mallory).inbound(session.session_id)
    assert hers is not None
    exported = MegolmInbound.from_pickle(hers.pickle, pickle_key(mallory)).export_at(
        hers.first_index
    )
    assert exported is not None
    forged = RoomKeyContent(
        group_id=group.group_id,
        session_id=session.session_id,
        key=exported,
        exported=True,
        owner=DeviceStamp(
            username="alice", device_id=alice.device_id, ed25519=stamp(alice).ed25519
        ),
    )
    bob_devices = await device_directory(mallory).recipient_devices("bob", refresh=True)
    await send_olm_control(mallory, group.group_id, bob_devices, "room_key", room_key=forged)
    failure = await next_event(b_in, DecryptionFailed)
    assert "another user" in failure.reason

    # mallory talks, is removed, and a compromised server keeps delivering her messages.
    await sent(mallory, "#Trust", "still a member")
    assert await group_bodies(b_in, 1) == ["still a member"]
    outbound = group_store(mallory).outbound(group.group_id)  # her ratchet, kept by the attacker
    assert outbound is not None
    await alice.remove_member("#Trust", "mallory")
    await until(lambda: [m.username for m in bob.group(group.group_id).members] == ["alice", "bob"])
    # A new message under mallory's session, injected by the server after her removal.
    ratchet = MegolmOutbound.from_pickle(outbound.pickle, pickle_key(mallory))
    content = GroupPlaintext(
        type="text",
        id="mallory-after-removal",
        sender=DeviceStamp(
            username="mallory", device_id=mallory.device_id, ed25519=stamp(mallory).ed25519
        ),
        group_id=group.group_id,
        sent_at=now_ms(),
        body="I was never removed",
    )
    body = ratchet.encrypt(content.model_dump_json().encode())
    async with server.services.engine.begin() as conn:
        injected = (
            await conn.execute(
                insert(messages)
                .values(
                    sender_device_pk=await device_pk(server, mallory),
                    client_message_id="mallory-after-removal",
                    created_at=0,
                    group_id=group.group_id,
                    body=body,
                )
                .returning(messages.c.id)
            )
        ).scalar_one()
    await deliver_copy(server, injected, bob)
    failure = await next_event(b_in, DecryptionFailed)
    assert "not a member" in failure.reason
    assert "I was never removed" not in [m.body for m in bob.history("#Trust")]


async def test_offline_backlog_of_group_and_direct_messages(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A member comes back to group messages (one sender's key in the same backlog),
    direct messages in between: everything opens, in order, nothing waits for a key."""
    alice = await make_client("alice")
    bob = await make_client("bob")
    carol = await make_client("carol")
    await alice.create_group("Backlog", ["bob", "carol"])
    b_in = bob.subscribe()
    await sent(alice, "#Backlog", "before")
    assert await group_bodies(b_in, 1) == ["before"]
    await bob.close()
    expected = ["before"]
    for i in range(30):
        sender = alice if i % 3 else carol  # carol's first one carries her key
        expected.append(f"{sender.username} {i}")
        await sent(sender, "#Backlog", expected[-1])
        if i % 5 == 0:
            await sent(alice, "bob", f"direct {i}")
    bob = await Client.open(tmp_path / "homes" / "bob", PASSWORD)
    try:
        inbox = bob.subscribe()
        await bob.connect()
        seen: list[object] = []
        async with asyncio.timeout(20):
            while not isinstance(event := await inbox.get(), Synced):
                seen.append(event)
        synced = event
        assert synced.count == 36
        assert not any(isinstance(e, MessageWaiting) for e in seen), "nothing waits for a key"
        assert [m.body for m in bob.history("#Backlog")] == expected
        assert [m.body for m in bob.history("alice")] == [f"direct {i}" for i in range(0, 30, 5)]
        assert bob.waiting_count() == 0 and not any(
            isinstance(e, MessageWaiting) for e in drain(inbox)
        )
    finally:
        await bob.close()


async def test_a_refused_device_watch_does_not_undo_a_group_change(
    server_factory: Callable[..., Awaitable[RunningServer]], tmp_path: Path
) -> None:
    """The server may refuse ``devices_watch`` (over its per-socket cap, or its
    rate): the group is still made and used; the lists are fetched when needed."""
    server = await server_factory(max_watched_users_per_socket=1)
    clients = []
    for name in ("alice", "bob", "carol"):
        client = await Client.create_account(
            tmp_path / name, server_url=server.url, username=name, password=PASSWORD, kdf=FAST_KDF
        )
        await client.connect()
        await asyncio.wait_for(client.synced.wait(), 10)
        clients.append(client)
    alice, bob, _carol = clients
    try:
        b_in = bob.subscribe()
        await alice.create_group("Capped", ["bob", "carol"])
        await sent(alice, "#Capped", "still works")
        assert await group_bodies(b_in, 1) == ["still works"]
    finally:
        for client in clients:
            await client.close()
