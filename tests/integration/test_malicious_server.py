"""A server that lies about keys: clients must not encrypt to devices it slips in."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import vodozemac
from sqlalchemy import insert, select, update

from bisik.client import IdentityChanged, IdentityKeyChanged, MessageReceived
from bisik.client._models import DeviceStamp, Plaintext
from bisik.crypto import IdentityKey, b64encode, device_payload
from bisik.server.stores.schema import devices, envelopes, messages, users
from tests._internals import devices as device_directory
from tests._internals import group_store, machine, stamp
from tests.conftest import ClientFactory, RunningServer, next_event, now_ms


async def inject_device(
    server: RunningServer, username: str, signer: IdentityKey
) -> vodozemac.Account:
    """Add a device the user never made, signed by ``signer``."""
    account = vodozemac.Account()
    curve = account.curve25519_key.to_base64()
    ed = account.ed25519_key.to_base64()
    async with server.services.engine.begin() as conn:
        user_pk, identity = (
            await conn.execute(
                select(users.c.id, users.c.identity_key).where(users.c.username == username)
            )
        ).one()
        payload = device_payload(
            username=username,
            device_id="EVILDEVICE",
            curve25519=curve,
            ed25519=ed,
            identity_key=identity,
        )
        await conn.execute(
            insert(devices).values(
                user_id=user_pk,
                device_id="EVILDEVICE",
                curve25519=curve,
                ed25519=ed,
                identity_signature=signer.sign(payload),
                device_signature=account.sign(payload).to_base64(),
                created_at=0,
            )
        )
    return account


async def replace_identity(
    server: RunningServer, username: str
) -> tuple[IdentityKey, vodozemac.Account]:
    """The server swaps in its own identity key for the user, and a device signed by it."""
    evil = IdentityKey.generate()
    async with server.services.engine.begin() as conn:
        await conn.execute(
            update(users).where(users.c.username == username).values(identity_key=evil.public_key)
        )
    return evil, await inject_device(server, username, evil)


async def test_unsigned_injected_device_gets_nothing(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    await inject_device(server, "bob", IdentityKey.generate())  # not bob's identity key
    envelopes = await alice.encrypt_for(
        "injected000001", {"to": "bob", "body": "secret", "sent_at": now_ms()}
    )
    assert [(e["username"], e["device_id"]) for e in envelopes] == [("bob", bob.device_id)]

    inbox = bob.subscribe()
    await alice.send_text("bob", "still private")
    assert (await next_event(inbox, MessageReceived)).message.body == "still private"


async def test_replaced_identity_key_blocks_sending(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    await make_client("bob")
    await alice.send_text("bob", "first contact pins bob's identity key")

    # The server swaps in its own identity key for bob and a device signed by it.
    evil, _ = await replace_identity(server, "bob")
    device_directory(alice).forget("bob")  # bob's list is stale: fetched again
    with pytest.raises(IdentityKeyChanged) as err:
        await device_directory(alice).recipient_devices("bob", refresh=True)
    assert err.value.new == evil.public_key
    with pytest.raises(IdentityKeyChanged):
        await alice.send_text("bob", "must not go to the impostor")


async def test_messages_from_an_impostor_identity_are_held_until_trusted(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    inbox = alice.subscribe()
    await bob.send_text("alice", "hi, really bob")
    assert (await next_event(inbox, MessageReceived)).message.body == "hi, really bob"

    evil, impostor = await replace_identity(server, "bob")

    # The impostor device opens an Olm session to alice with one of her keys.
    token = await bob.transport.token()
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        claimed = (
            await http.post(
                "/v1/keys/claim",
                json={"devices": [{"username": "alice", "device_id": alice.device_id}]},
            )
        ).json()["keys"][0]["key"]["key"]
    session = impostor.create_outbound_session(
        vodozemac.Curve25519PublicKey.from_base64(machine(alice).curve25519),
        vodozemac.Curve25519PublicKey.from_base64(claimed),
    )
    content = Plaintext(
        type="text",
        id="impostor000001",
        sender=DeviceStamp(
            username="bob", device_id="EVILDEVICE", ed25519=impostor.ed25519_key.to_base64()
        ),
        recipient=DeviceStamp(
            username="alice", device_id=alice.device_id, ed25519=stamp(alice).ed25519
        ),
        to="alice",
        sent_at=now_ms(),
        body="I am bob, honest",
    )
    msg_type, body = session.encrypt(content.model_dump_json().encode()).to_parts()
    async with server.services.engine.begin() as conn:
        evil_pk = (
            await conn.execute(select(devices.c.id).where(devices.c.device_id == "EVILDEVICE"))
        ).scalar_one()
        alice_pk = (
            await conn.execute(select(devices.c.id).where(devices.c.device_id == alice.device_id))
        ).scalar_one()
        message_pk = (
            await conn.execute(
                insert(messages)
                .values(sender_device_pk=evil_pk, client_message_id="impostor000001", created_at=1)
                .returning(messages.c.id)
            )
        ).scalar_one()
        await conn.execute(
            insert(envelopes).values(
                message_id=message_pk,
                recipient_device_pk=alice_pk,
                kind="olm",
                type=msg_type,
                body=b64encode(body),
                created_at=1,
            )
        )
    alice.resync()
    changed = await next_event(inbox, IdentityChanged)
    assert changed.username == "bob"
    assert changed.new == evil.public_key
    await asyncio.sleep(0.3)
    assert [m.body for m in alice.history("bob")] == ["hi, really bob"]
    async with server.services.engine.connect() as conn:
        held = (await conn.execute(select(envelopes.c.id))).all()
    assert len(held) == 1, "the envelope waits on the server, it is not dropped"
    with pytest.raises(IdentityKeyChanged):
        await alice.send_text("bob", "not to the impostor")

    # Only when the user accepts the new key does the held message show.
    await alice.trust_identity("bob")
    assert (await next_event(inbox, MessageReceived)).message.body == "I am bob, honest"


async def test_group_keys_skip_a_member_whose_identity_key_was_replaced(
    make_client: ClientFactory, server: RunningServer
) -> None:
    """A group message goes to every member but one whose identity key changed
    without the sender accepting it: the new session is not shared with any of
    that member's devices, real or injected (the member lists are read in bulk)."""
    alice = await make_client("alice")
    await make_client("bob")
    carol = await make_client("carol")
    group = await alice.create_group("trio", ["bob", "carol"])
    target = f"#{group.group_id}"
    inbox = carol.subscribe()
    await alice.send_text(target, "before")
    assert (await next_event(inbox, MessageReceived)).message.body == "before"

    await replace_identity(server, "bob")
    directory = device_directory(alice)
    directory.forget("bob")
    with pytest.raises(IdentityKeyChanged):
        await directory.recipient_devices("bob", refresh=True)
    assert set(directory.fresh_devices(["bob", "carol"])) == {"carol"}

    await alice.send_text(target, "after the swap")
    assert (await next_event(inbox, MessageReceived)).message.body == "after the swap"
    outbound = group_store(alice).outbound(group.group_id)
    assert outbound is not None
    assert {ref.split("/")[0] for ref in outbound.shared_with} == {"carol"}
