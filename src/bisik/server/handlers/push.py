from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid02
from pywebpush import WebPushException, webpush_async

from bisik.proto import Done, ErrorCode, ProtocolError, PushSubscription, VapidKey
from bisik.server._clock import now_ms
from bisik.server._config import ServerConfig
from bisik.server.stores import DeviceHandle
from bisik.server.stores.push import PushStore, Subscription

log = logging.getLogger("bisik.server.push")

# What a push says: that there is something to fetch. No sender, no content,
# no count (the device learns everything over its own E2EE connection).
PUSH_PAYLOAD = json.dumps({"type": "new_messages"})


def _private_host(host: str) -> bool:
    if host in ("localhost", "") or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_private or address.is_loopback or address.is_link_local


class PushHandler:
    """Web Push (VAPID, RFC 8030/8291/8292) to devices that are offline, rate-limited."""

    def __init__(self, config: ServerConfig, store: PushStore) -> None:
        self._config = config
        self._store = store
        self._vapid: Vapid02 | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _key(self) -> Vapid02:
        if self._vapid is None:
            fresh = Vapid02()
            fresh.generate_keys()
            pem = await self._store.secret("vapid_private_key", fresh.private_pem().decode())
            self._vapid = Vapid02.from_pem(pem.encode())
        return self._vapid

    async def public_key(self) -> VapidKey:
        """The ``applicationServerKey`` a browser subscribes with."""
        raw = (await self._key()).public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return VapidKey(public_key=base64.urlsafe_b64encode(raw).decode().rstrip("="))

    async def subscribe(self, device: DeviceHandle, req: PushSubscription) -> Done:
        host = urlsplit(req.endpoint).hostname or ""
        if _private_host(host) and not self._config.push_allow_private:
            # The server would make requests there: no internal addresses.
            raise ProtocolError(ErrorCode.BAD_REQUEST, "push endpoint must be a public address")
        await self._store.subscribe(
            device.pk, req.endpoint, req.keys.p256dh, req.keys.auth, now_ms()
        )
        return Done()

    async def unsubscribe(self, device: DeviceHandle) -> Done:
        await self._store.unsubscribe(device.pk)
        return Done()

    def notify(self, device_pks: Iterable[int]) -> None:
        """Push to those of these devices that are offline and not pushed lately."""
        pks = list(device_pks)
        if pks:
            task = asyncio.get_running_loop().create_task(self._notify(pks))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _notify(self, device_pks: list[int]) -> None:
        try:
            due = await self._store.due(device_pks, now_ms(), self._config.push_interval_s * 1000)
            for subscription in due:
                await self._send(subscription)
        except Exception:
            log.exception("push notification failed")

    async def _send(self, sub: Subscription) -> None:
        try:
            await webpush_async(
                {"endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh, "auth": sub.auth}},
                data=PUSH_PAYLOAD,
                vapid_private_key=await self._key(),
                vapid_claims={"sub": self._config.push_contact},
                ttl=24 * 3600,
                timeout=10,
            )
        except WebPushException as exc:
            status = getattr(exc.response, "status", None)
            if status in (404, 410):
                await self._store.unsubscribe(sub.device_pk)  # the subscription is gone
            log.info("push refused by the push service: %s", status)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
