"""A server that lies about keys: clients must not encrypt to devices it slips in."""

from __future__ import annotations

import pytest
import vodozemac
from sqlalchemy import insert, select, update

from bisik.client import IdentityKeyChanged, MessageReceived
from bisik.crypto import IdentityKey, device_payload
from bisik.server.stores.schema import devices, users
from tests.conftest import ClientFactory, RunningServer, next_event


async def inject_device(server: RunningServer, username: str, signer: IdentityKey) -> str:
    """Add a device the user never made, signed by ``signer``; returns its Curve25519 key."""
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
    return curve


async def test_unsigned_injected_device_gets_nothing(
    make_client: ClientFactory, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    await inject_device(server, "bob", IdentityKey.generate())  # not bob's identity key
    envelopes = await alice._encrypt_for(
        "injected000001", {"to": "bob", "body": "secret", "sent_at": 1}
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
    evil = IdentityKey.generate()
    async with server.services.engine.begin() as conn:
        await conn.execute(
            update(users).where(users.c.username == "bob").values(identity_key=evil.public_key)
        )
    await inject_device(server, "bob", evil)
    alice._devices.forget("bob")
    alice._devices._fetched.clear()
    with pytest.raises(IdentityKeyChanged) as err:
        await alice._devices.recipient_devices("bob", refresh=True)
    assert err.value.new == evil.public_key
    with pytest.raises(IdentityKeyChanged):
        await alice.send_text("bob", "must not go to the impostor")
