"""Presence announced by socket connects and disconnects (group-committed on the server)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bisik.client import Client, PresenceChanged
from tests.conftest import PASSWORD, ClientFactory, RunningServer, next_event
from tests.integration.test_devices import link
from tests.integration.test_signals import chat_once


def presence_events(queue: asyncio.Queue[Any]) -> list[tuple[str, bool]]:
    events = []
    while not queue.empty():
        event = queue.get_nowait()
        if isinstance(event, PresenceChanged):
            events.append((event.username, event.online))
    return events


async def test_first_socket_in_and_last_socket_out_are_announced(
    make_client: ClientFactory, tmp_path: Path, server: RunningServer
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    await chat_once(alice, bob)
    phone = await link(bob, tmp_path / "phone")
    await phone.connect()
    await asyncio.wait_for(phone.synced.wait(), 10)
    await phone.close()
    events = alice.subscribe()

    # bob's phone comes while his laptop is online, then the laptop goes:
    # nothing to announce until the last of them goes.
    phone = await Client.open(tmp_path / "phone", PASSWORD)
    try:
        await phone.connect()
        await asyncio.wait_for(phone.synced.wait(), 10)
        await bob.close()
        await asyncio.sleep(0.3)
        assert presence_events(events) == []
    finally:
        await phone.close()
    offline = await next_event(events, PresenceChanged)
    assert (offline.username, offline.online) == ("bob", False)
    phone = await Client.open(tmp_path / "phone", PASSWORD)
    try:
        await phone.connect()
        online = await next_event(events, PresenceChanged)
        assert (online.username, online.online) == ("bob", True)

        # bob hides his presence: his devices come and go unannounced.
        await phone.update_settings(presence=False)
        hidden = await next_event(events, PresenceChanged)
        assert (hidden.username, hidden.online) == ("bob", False)
        await phone.transport.sio.disconnect()
        await phone.connect()
        await asyncio.wait_for(phone.synced.wait(), 10)
    finally:
        await phone.close()
    await asyncio.sleep(0.3)
    assert presence_events(events) == []
