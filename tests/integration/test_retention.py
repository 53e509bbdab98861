"""What the server keeps, and for how long (issue 19, item 14): message records only
as long as a retry needs them, conversation pairs only while they are used.

The server's clock is moved by patching ``now_ms`` in the handlers that read it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bisik.client import Client, DeviceRemoved, ProtocolError
from bisik.server.handlers import messages as messages_module
from bisik.server.handlers import presence as presence_module
from bisik.server.stores.schema import conversations, devices, envelopes, messages
from tests.conftest import ClientFactory, RunningServer, next_event
from tests.integration.test_devices import link
from tests.integration.test_signals import chat_once

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


_REAL_NOW = messages_module.now_ms


def move_clock(monkeypatch: pytest.MonkeyPatch, ahead_ms: int) -> None:
    for module in (messages_module, presence_module):
        monkeypatch.setattr(module, "now_ms", lambda: _REAL_NOW() + ahead_ms)


async def count(server: RunningServer, table: object) -> int:
    async with server.services.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def no_envelopes_left(server: RunningServer) -> None:
    async with asyncio.timeout(10):
        while await count(server, envelopes):
            await asyncio.sleep(0.05)


async def send_raw(sender: Client, recipient: str, device_id: str, message_id: str) -> bool:
    """A stored send straight through the transport; whether it was a duplicate."""
    result = await sender.transport.call(
        "send",
        {
            "client_message_id": message_id,
            "envelopes": [
                {"username": recipient, "device_id": device_id, "type": 1, "body": "AAAA" * 8}
            ],
        },
    )
    return bool(result["duplicate"])


async def test_message_records_outlive_delivery_only_as_long_as_retries_need(
    make_client: ClientFactory, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    dave = await make_client("dave", connect=False)
    await chat_once(alice, bob)  # a message and its receipt, both delivered and acked
    await no_envelopes_left(server)
    delivered = await count(server, messages)
    assert delivered >= 2
    assert not await send_raw(alice, "dave", dave.device_id, "waiting00001")

    # Within the window a retry is recognised, delivered or not.
    move_clock(monkeypatch, 47 * HOUR_MS)
    assert (await server.services.messages.purge()).messages == 0
    assert await send_raw(alice, "dave", dave.device_id, "waiting00001")
    assert await count(server, messages) == delivered + 1

    # Past it, the records of delivered messages go; a message still waiting for
    # its recipient keeps its record (its envelope refers to it).
    move_clock(monkeypatch, 49 * HOUR_MS)
    assert (await server.services.messages.purge()).messages == delivered
    assert await count(server, messages) == 1
    assert await count(server, envelopes) == 1


async def test_unused_conversation_pairs_are_forgotten(
    make_client: ClientFactory, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    await chat_once(alice, bob)
    assert await alice.presence("bob") is not None

    move_clock(monkeypatch, 89 * DAY_MS)
    assert (await server.services.messages.purge()).pairs == 0
    assert await alice.presence("bob") is not None

    move_clock(monkeypatch, 91 * DAY_MS)
    assert (await server.services.messages.purge()).pairs == 1
    assert await count(server, conversations) == 0
    with pytest.raises(ProtocolError) as err:
        await alice.presence("bob")
    assert err.value.code == "not_in_conversation"

    # Writing again (each way: the receipt is bob's side) makes the pair again.
    await chat_once(alice, bob)
    assert await alice.presence("bob") is not None


async def test_a_revoked_device_keeps_only_what_stops_its_return(
    make_client: ClientFactory, server: RunningServer, tmp_path: Path
) -> None:
    """Its row stays (its id and keys stay taken: a replayed registration fails), but
    its name and last seen time, of no use once revoked, are cleared."""
    alice = await make_client("alice")
    phone = await link(alice, tmp_path / "phone")
    await alice.rename_device(phone.device_id, "work phone")
    removed = phone.subscribe()
    await phone.connect()  # online when revoked: its sockets close after
    await asyncio.wait_for(phone.synced.wait(), 10)
    await alice.remove_device(phone.device_id)
    await next_event(removed, DeviceRemoved)
    await phone.close()
    query = select(
        devices.c.curve25519,
        devices.c.revoked_at,
        devices.c.name,
        devices.c.last_seen_at,
        devices.c.online_count,
    ).where(devices.c.device_id == phone.device_id)
    async with asyncio.timeout(10):
        while True:
            async with server.services.engine.connect() as conn:
                row = (await conn.execute(query)).one()
            if row.online_count == 0:
                break
            await asyncio.sleep(0.05)
    assert row.curve25519 and row.revoked_at is not None
    assert (row.name, row.last_seen_at) == (None, None)
