"""Rendezvous mailboxes for device linking.

Anyone may open one (the new device has no account yet), so what a stranger can
store this way is bounded: channels per address (``_limits.py``), bytes and
messages per channel (here), and a short life, after which the purge deletes
the channel and everything in it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets

from bisik.proto import (
    Done,
    ErrorCode,
    ProtocolError,
    RendezvousClose,
    RendezvousMessageOut,
    RendezvousMessages,
    RendezvousRead,
    RendezvousToken,
    RendezvousWrite,
    RendezvousWritten,
)
from bisik.server._clock import now_ms
from bisik.server._config import ServerConfig
from bisik.server.stores.rendezvous import Channel, RendezvousStore

log = logging.getLogger("bisik.server.rendezvous")

# A pairing code must be used within this time, and then only once.
PAIRING_TTL_MS = 5 * 60 * 1000
# Once claimed, the two devices have this long to finish (history can be long).
LINKING_TTL_MS = 15 * 60 * 1000
MAX_MESSAGES = 4096
POLL_INTERVAL_S = 0.2


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class RendezvousHandler:
    """Mailboxes for device linking. Bodies are encrypted end to end by the two devices."""

    def __init__(self, config: ServerConfig, store: RendezvousStore) -> None:
        self._config = config
        self._store = store

    async def create(self) -> RendezvousToken:
        channel = secrets.token_urlsafe(18)
        token = secrets.token_urlsafe(32)
        now = now_ms()
        await self._store.create(channel, _hash(token), now, now + PAIRING_TTL_MS)
        return RendezvousToken(channel=channel, token=token, expires_at=now + PAIRING_TTL_MS)

    async def _channel(self, channel: str) -> Channel:
        found = await self._store.get(channel) if len(channel) <= 64 else None
        if found is None or found.expires_at < now_ms():
            raise ProtocolError(
                ErrorCode.NOT_FOUND, "this pairing code is unknown, used or expired"
            )
        return found

    def _role(self, found: Channel, token: str) -> str:
        digest = _hash(token)
        if secrets.compare_digest(digest, found.new_token_hash):
            return "new"
        if found.existing_token_hash is not None and secrets.compare_digest(
            digest, found.existing_token_hash
        ):
            return "existing"
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "wrong token for this pairing channel")

    async def claim(self, channel: str) -> RendezvousToken:
        """The existing device joins; a pairing code works for one device only."""
        await self._channel(channel)
        token = secrets.token_urlsafe(32)
        now = now_ms()
        if not await self._store.claim(channel, _hash(token), now, now + LINKING_TTL_MS):
            raise ProtocolError(ErrorCode.NOT_FOUND, "this pairing code was already used")
        return RendezvousToken(channel=channel, token=token, expires_at=now + LINKING_TTL_MS)

    async def write(self, channel: str, req: RendezvousWrite) -> RendezvousWritten:
        found = await self._channel(channel)
        role = self._role(found, req.token)
        max_bytes = self._config.rendezvous_bytes_per_channel
        msg_id = await self._store.post(channel, role, req.body, now_ms(), MAX_MESSAGES, max_bytes)
        if msg_id is None:
            raise ProtocolError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"this pairing channel is full (at most {MAX_MESSAGES} messages"
                f" and {max_bytes} bytes)",
            )
        return RendezvousWritten(id=msg_id)

    async def read(self, channel: str, req: RendezvousRead) -> RendezvousMessages:
        """The peer's messages after ``after``, waiting up to ``wait`` seconds for one."""
        found = await self._channel(channel)
        role = self._role(found, req.token)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + req.wait
        while True:
            rows = await self._store.read(channel, role, req.after, 64)
            if rows or loop.time() >= deadline:
                return RendezvousMessages(
                    messages=[RendezvousMessageOut(id=r.id, body=r.body) for r in rows]
                )
            await asyncio.sleep(POLL_INTERVAL_S)

    async def close(self, channel: str, req: RendezvousClose) -> Done:
        found = await self._channel(channel)
        self._role(found, req.token)
        await self._store.close(channel)
        return Done()

    async def purge(self) -> int:
        """Delete expired channels with their messages; returns how many."""
        return await self._store.purge(now_ms())

    async def run_purge(self) -> None:
        """Purge every ``purge_interval_s`` until cancelled: an expired channel's
        data goes even if nobody opens another one."""
        while True:
            try:
                purged = await self.purge()
            except Exception:
                log.exception("rendezvous purge failed")
            else:
                if purged:
                    log.info("purged %d pairing channels", purged)
            await asyncio.sleep(self._config.purge_interval_s)
