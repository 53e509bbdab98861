"""Several server processes behind one PostgreSQL and one Redis (fan-out across nodes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bisik.client import Client, MessageReceived
from bisik.server import ServerConfig
from tests.conftest import (
    FAST_KDF,
    PASSWORD,
    POSTGRES_URL,
    REDIS_URL,
    RunningServer,
    _postgres_database,
    next_event,
)

pytestmark = pytest.mark.skipif(
    not (POSTGRES_URL and REDIS_URL),
    reason="needs BISIK_TEST_POSTGRES_URL and BISIK_TEST_REDIS_URL (CI sets both)",
)


async def test_message_crosses_server_nodes_live(tmp_path: Path) -> None:
    db_url, drop = await _postgres_database()
    channel_db = REDIS_URL
    nodes = [
        RunningServer(
            ServerConfig(data_dir=tmp_path / f"node{i}", database_url=db_url, redis_url=channel_db)
        )
        for i in range(2)
    ]
    clients: list[Client] = []
    try:
        for node in nodes:
            await node.start()
        alice, bob = [
            await Client.create_account(
                tmp_path / name,
                server_url=node.url,
                username=name,
                password=PASSWORD,
                kdf=FAST_KDF,
            )
            for name, node in (("alice", nodes[0]), ("bob", nodes[1]))
        ]
        clients += [alice, bob]
        for client in clients:
            await client.connect()
            await asyncio.wait_for(client.synced.wait(), 10)
        b_in, a_in = bob.subscribe(), alice.subscribe()
        for i in range(5):
            await alice.send_text("bob", f"across nodes {i}")
            event = await next_event(b_in, MessageReceived)
            assert event.message.body == f"across nodes {i}"
        await bob.send_text("alice", "and back")
        assert (await next_event(a_in, MessageReceived)).message.body == "and back"
        # A group message's copies are pushed through Redis to the other node too.
        group = await alice.create_group("across", ["bob"])
        await alice.send_text(f"#{group.group_id}", "to the group across nodes")
        event = await next_event(b_in, MessageReceived)
        assert (event.message.conversation, event.message.body) == (
            f"#{group.group_id}",
            "to the group across nodes",
        )

        # bob's node goes away; he reconnects to the other one and gets his backlog.
        await bob.close()
        clients.remove(bob)
        await alice.send_text("bob", "while node 1 is down")
        sent = alice.history("bob")[-1]
        await alice.wait_sent(sent.id, timeout=10)
        await nodes[1].stop()
        bob = await Client.open(tmp_path / "bob", PASSWORD)
        clients.append(bob)
        bob.transport.server_url = nodes[0].url  # the same account, through node 0
        bob.transport.http.base_url = nodes[0].url  # type: ignore[assignment]
        b_in = bob.subscribe()
        await bob.connect()
        assert (await next_event(b_in, MessageReceived)).message.body == "while node 1 is down"
    finally:
        for client in clients:
            await client.close()
        for node in nodes:
            await node.stop()
        await drop()
