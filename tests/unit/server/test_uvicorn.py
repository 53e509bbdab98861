"""The lean stand-ins for asyncio.Queue and asyncio.Event in uvicorn's websocket protocol."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
import websockets
from uvicorn import Config
from uvicorn.server import ServerState

from bisik.server._uvicorn import LeanWebSocketProtocol, uvicorn_options
from bisik.server._waiters import Flag, Inbox
from tests.conftest import free_port


async def test_inbox_hands_items_over_in_order() -> None:
    inbox = Inbox()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert not inbox.empty()
    assert await inbox.get() == 1
    assert await inbox.get() == 2
    assert inbox.empty()


async def test_inbox_wakes_a_waiting_reader() -> None:
    inbox = Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done()
    inbox.put_nowait("connect")
    assert await asyncio.wait_for(reader, 1) == "connect"


async def test_inbox_reader_cancelled_while_waiting_loses_nothing() -> None:
    inbox = Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    inbox.put_nowait("later")
    assert await asyncio.wait_for(inbox.get(), 1) == "later"


async def test_inbox_two_readers_each_get_one_item() -> None:
    inbox = Inbox()
    readers = [asyncio.create_task(inbox.get()) for _ in range(2)]
    await asyncio.sleep(0)
    inbox.put_nowait("a")
    inbox.put_nowait("b")
    assert sorted(await asyncio.wait_for(asyncio.gather(*readers), 1)) == ["a", "b"]


async def test_flag_holds_waiters_until_set_and_releases_them_in_order() -> None:
    flag = Flag()
    flag.set()
    assert await flag.wait()
    flag.clear()
    assert not flag.is_set()
    released: list[int] = []

    async def waiter(n: int) -> None:
        await flag.wait()
        released.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert released == []
    flag.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert released == [0, 1, 2]


def test_options_name_the_lean_protocol_and_bound_frames_by_the_servers_limit() -> None:
    options = uvicorn_options(1024 * 1024)
    assert options["ws"] is LeanWebSocketProtocol
    assert options["ws_per_message_deflate"] is False
    assert options["ws_max_size"] == 4 * 1024 * 1024  # not uvicorn's 16 MiB


def test_protocol_slots_shadow_nothing_of_uvicorn() -> None:
    # A slot named like a method or class attribute of uvicorn's class would hide it.
    bases = LeanWebSocketProtocol.__mro__[1:]
    assert not [n for n in LeanWebSocketProtocol.__slots__ if any(n in vars(b) for b in bases)]


async def test_protocol_keeps_uvicorns_attributes_in_slots() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        pass

    config = Config(app=app, **uvicorn_options(1024 * 1024))
    config.load()
    protocol = LeanWebSocketProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    # Every attribute uvicorn's __init__ sets has a slot: no per-connection dict.
    assert vars(protocol) == {}
    assert protocol.close_timeout == 10.0
    assert isinstance(protocol.queue, Inbox)


async def test_send_now_writes_while_the_socket_takes_it_and_refuses_otherwise() -> None:
    """``send_now`` writes a frame at once while the transport is writable and the
    connection open; held-up (a full buffer) or closed, it writes nothing."""
    results: list[bool] = []
    done = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        protocol = send.__self__
        results.append(protocol.send_now("first"))
        protocol.pause_writing()  # as the transport does when its buffer is full
        results.append(protocol.send_now("held"))
        protocol.resume_writing()
        results.append(protocol.send_now(b"second"))
        await receive()  # websocket.disconnect
        results.append(protocol.send_now("after close"))
        done.set()

    port = free_port()
    server = uvicorn.Server(
        Config(app=app, host="127.0.0.1", port=port, lifespan="off", **uvicorn_options(1024))
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == "first"
            assert await asyncio.wait_for(ws.recv(), 5) == b"second"
        await asyncio.wait_for(done.wait(), 5)
        assert results == [True, False, True, False]
    finally:
        server.should_exit = True
        await serving
