"""Group members' devices as bare sockets, each on its own: for bench_groups.py.

A real member device decrypts and stores what it receives on its own CPU; 500
``bisik.client.Client``s in one process instead queue behind each other, so the
last one's "received" measures that queue. Here each member's device keeps its
access token (signed in by the real client that created it) and is a bare
Engine.IO/Socket.IO connection (``bench_idle.LightSocket``) in this separate
process, which notes when each group envelope reaches the socket (by the
message's server sequence number) and acks it as the SDK does (``ack`` with no
answer asked, coalesced over ``ACK_DELAY_S``). What a device does after that,
decrypt and store, is measured on the few real clients bench_groups.py keeps.

Run by bench_groups.py: ``python bench/_light_members.py URL`` with the tokens as
one JSON list on stdin; prints ``ready N``, then on ``report`` a JSON line
``{"arrivals": {seq: [time.monotonic(), ...]}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time

import uvloop
import websockets

from bench_idle import LightSocket, raise_nofile
from bisik.client._inbox import ACK_DELAY_S

CONCURRENCY = 50


class Member(LightSocket):
    """A member device: answers pings, notes and acks every group envelope."""

    def __init__(self, url: str, arrivals: dict[int, list[float]]) -> None:
        super().__init__(url)
        self.arrivals = arrivals
        self.unacked: list[int] = []
        self.acker: asyncio.Task[None] | None = None

    async def _ack_later(self) -> None:
        await asyncio.sleep(ACK_DELAY_S)
        ids, self.unacked = self.unacked, []
        await self.ws.send("42" + json.dumps(["ack", {"ids": ids}]))

    async def _pong(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for packet in self.ws:
                if packet == "2":
                    await self.ws.send("3")
                elif isinstance(packet, str) and packet.startswith('42["envelope'):
                    now = time.monotonic()
                    event, data = json.loads(packet[2:])
                    envelopes = data["envelopes"] if event == "envelopes" else [data]
                    for envelope in envelopes:
                        if envelope.get("group_id"):
                            self.arrivals.setdefault(envelope["seq"], []).append(now)
                    if not self.unacked:
                        self.acker = asyncio.create_task(self._ack_later())
                    self.unacked += [envelope["id"] for envelope in envelopes]


async def main(url: str) -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tokens: list[str] = json.loads(await reader.readline())
    arrivals: dict[int, list[float]] = {}
    members = [Member(url, arrivals) for _ in tokens]
    gate = asyncio.Semaphore(CONCURRENCY)

    async def connect(member: Member, token: str) -> None:
        async with gate:
            await member.connect({"token": token})

    await asyncio.gather(*(connect(m, t) for m, t in zip(members, tokens, strict=True)))
    print(f"ready {len(members)}", flush=True)
    while (line := (await reader.readline()).decode().strip()) != "report":
        if not line:
            return
    print(json.dumps({"arrivals": arrivals}), flush=True)
    await asyncio.gather(*(m.close() for m in members))


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
