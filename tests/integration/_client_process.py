"""A ``Client`` in its own process, so a test can freeze it whole (SIGSTOP).

    python -m tests.integration._client_process HOME PASSWORD PEER COUNT EXPECT

Opens the profile in HOME, sends COUNT numbered texts to PEER (a short pause
between them), and prints one JSON line per event: ``{"sent": id}`` when the
server acknowledged a message, ``{"received": id, "sender_device": ...}`` for
each message shown. It exits once all its messages are acknowledged and EXPECT
messages were shown.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from bisik.client import Client, MessageReceived, MessageSent


def emit(line: dict[str, object]) -> None:
    print(json.dumps(line), flush=True)


async def main(home: Path, password: str, peer: str, count: int, expect: int) -> None:
    client = await Client.open(home, password)
    inbox = client.subscribe()
    await client.connect(retry=True)
    emit({"ready": client.device_id})
    sent = received = 0

    async def sending() -> None:
        for i in range(count):
            message = await client.send_text(peer, f"canary-pause {client.username} #{i}")
            emit({"queued": message.id})
            await asyncio.sleep(0.1)

    task = asyncio.create_task(sending())
    while sent < count or received < expect:
        event = await inbox.get()
        if isinstance(event, MessageSent):
            sent += 1
            emit({"sent": event.message.id})
        elif isinstance(event, MessageReceived):
            received += 1
            emit({"received": event.message.id, "sender_device": event.message.sender_device})
    await task
    await client.close()


if __name__ == "__main__":
    home, password, peer, count, expect = sys.argv[1:6]
    asyncio.run(main(Path(home), password, peer, int(count), int(expect)))
