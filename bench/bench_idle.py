"""Idle connections: server memory per authenticated socket, and mass reconnect after a restart.

Run: ``.venv/bin/python bench/bench_idle.py [--counts 1000,5000] [--skip-node] [--skip-bisik]
[--skip-reconnect] [--deflate]``
(``--counts 1000,5000,10000`` for 10k; the script raises its open-file limit.)

The connections are light clients speaking Engine.IO 4 / Socket.IO 5 directly
over one ``websockets`` connection each (answering the server's pings), not full
SDK clients, so that thousands fit in the load generator; they authenticate
exactly as ``bisik.client``'s transport does:

* Bisik: each is its own account and device, registered once (``POST
  /v1/accounts`` with identity- and device-signed keys, no one-time keys); per
  connection ``POST /v1/auth/challenge``, the device signs the challenge,
  ``POST /v1/auth/token``, then the Socket.IO connect with ``{"token": ...}``.
* Node relay (bench/baselines/node-relay): connect with ``{"user", "token"}``.

The Bisik server runs as ``python -m bisik.cli server`` (as deployed, with its
uvicorn options). ``--deflate``: the clients offer permessage-deflate, as
browsers do (the SDK's Socket.IO client does not).

Measured, per count (cumulative: 1,000 then 4,000 more, ...): the server
process's RSS before the first connection and with all of them open and idle
(after a settle delay), divided by the number of connections; then the server's
CPU over 30 s with all of them idle (heartbeats only). Then the server is
restarted (SIGTERM, same data) and every client reconnects at once with the
access token it holds, as ``bisik.client``'s transport does while the token is
fresh (it signs in again only if the server refuses it): the time until all are
connected again, and the server's CPU time for it. The load generator is a
separate process from the server. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from _common import banner, proc_cpu_seconds, proc_memory_mib, summary_line
from _node import run_both
from bench_latency import ServerProcess
from bisik.crypto import IdentityKey, auth_payload, b64encode, device_payload

SETTLE_S = 2.0
# Long enough to span a full ping interval (25 s) of every socket.
IDLE_CPU_S = 30.0
CONCURRENCY = 64  # connection attempts in flight at once (sign-ins included)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class LightSocket:
    """One Socket.IO connection on a bare websocket: connect with ``auth``, answer pings."""

    # Offer permessage-deflate as browsers do (--deflate); the SDK's client does not.
    compression: str | None = None

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.ws_url = f"ws://{parts.netloc}/socket.io/?EIO=4&transport=websocket"
        self.ws: Any = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self, auth: dict[str, str]) -> None:
        self.ws = await websockets.connect(self.ws_url, max_size=None, compression=self.compression)
        opening = await self.ws.recv()  # Engine.IO "0{...}"
        if not str(opening).startswith("0"):
            raise RuntimeError(f"unexpected Engine.IO open packet {opening!r}")
        await self.ws.send("40" + json.dumps(auth))
        while True:
            packet = str(await self.ws.recv())
            if packet == "2":
                await self.ws.send("3")
            elif packet.startswith("40"):
                break
            elif packet.startswith("44"):
                raise RuntimeError(f"connection refused: {packet}")
        self._task = asyncio.create_task(self._pong())

    async def _pong(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for packet in self.ws:
                if packet == "2":
                    await self.ws.send("3")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()


class BisikDevice:
    """A registered account with one device whose Ed25519 key signs like a real device's."""

    def __init__(self, index: int) -> None:
        self.username = f"idle{index}"
        self.device_id = f"DEV{index:07d}"
        self.identity = IdentityKey.generate()
        self.device_key = IdentityKey.generate()  # the device's own Ed25519 key
        curve = X25519PrivateKey.generate().public_key()
        self.curve25519 = b64encode(
            curve.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        self.token: str | None = None

    def register_body(self) -> dict[str, Any]:
        payload = device_payload(
            username=self.username,
            device_id=self.device_id,
            curve25519=self.curve25519,
            ed25519=self.device_key.public_key,
            identity_key=self.identity.public_key,
        )
        return {
            "username": self.username,
            "device": {
                "username": self.username,
                "device_id": self.device_id,
                "curve25519": self.curve25519,
                "ed25519": self.device_key.public_key,
                "identity_key": self.identity.public_key,
                "signatures": {
                    "identity": self.identity.sign(payload),
                    "device": self.device_key.sign(payload),
                },
            },
        }

    async def auth(self, http: httpx.AsyncClient) -> dict[str, str]:
        """A fresh token by challenge-response, as bisik.client's transport gets one."""
        ids = {"username": self.username, "device_id": self.device_id}
        challenge = (await http.post("/v1/auth/challenge", json=ids)).json()["challenge"]
        signature = self.device_key.sign(auth_payload(challenge=challenge, **ids))
        answer = await http.post(
            "/v1/auth/token", json={**ids, "challenge": challenge, "signature": signature}
        )
        answer.raise_for_status()
        self.token = str(answer.json()["token"])
        return {"token": self.token}

    async def reauth(self, http: httpx.AsyncClient) -> dict[str, str]:
        """The token in hand, as the SDK reconnects; a sign-in if there is none."""
        return {"token": self.token} if self.token else await self.auth(http)


class NodeDevice:
    def __init__(self, index: int) -> None:
        self.username = f"idle{index}"

    async def auth(self, http: httpx.AsyncClient) -> dict[str, str]:
        return {"user": self.username, "token": secrets.token_urlsafe(16)}

    async def reauth(self, http: httpx.AsyncClient) -> dict[str, str]:
        return await self.auth(http)


async def connect_all(
    url: str, devices: list[Any], http: httpx.AsyncClient, *, reconnect: bool = False
) -> tuple[list[LightSocket], int]:
    """Sign in and connect every device, ``CONCURRENCY`` at a time; (sockets, failures).
    With ``reconnect``, each uses the token it holds (a refused one: sign in again)."""
    gate = asyncio.Semaphore(CONCURRENCY)
    failures = 0

    async def one(device: Any) -> LightSocket | None:
        nonlocal failures
        async with gate:
            for attempt in range(5):
                sock = LightSocket(url)
                try:
                    sign_in = device.reauth if reconnect and not attempt else device.auth
                    await sock.connect(await sign_in(http))
                    return sock
                except (OSError, RuntimeError, httpx.HTTPError, websockets.WebSocketException):
                    await sock.close()
                    await asyncio.sleep(0.2)
            failures += 1
            return None

    sockets = await asyncio.gather(*(one(d) for d in devices))
    return [s for s in sockets if s is not None], failures


async def run_kind(
    kind: str, server: ServerProcess, counts: list[int], *, skip_reconnect: bool = False
) -> dict[str, float]:
    total = max(counts)
    out: dict[str, float] = {}
    if kind == "bisik":
        print(f"  [bisik] {' '.join(server.command[1:])}")
    await server.start()
    sockets: list[LightSocket] = []
    # Idle keep-alive connections expire before uvicorn's 5 s timeout closes them (as the SDK).
    limits = httpx.Limits(
        max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY, keepalive_expiry=2.0
    )
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
            devices: list[Any]
            if kind == "bisik":
                t0 = time.perf_counter()
                devices = [BisikDevice(i) for i in range(total)]
                gate = asyncio.Semaphore(CONCURRENCY)

                async def register(device: BisikDevice) -> None:
                    async with gate:
                        for attempt in range(5):
                            try:
                                resp = await http.post("/v1/accounts", json=device.register_body())
                            except httpx.TransportError:  # e.g. a keep-alive connection closed
                                await asyncio.sleep(0.2)
                                continue
                            # A retry of a request the server did complete finds the name taken.
                            if resp.status_code < 400 or (attempt and resp.status_code == 409):
                                return
                            resp.raise_for_status()
                        raise RuntimeError(f"could not register {device.username}")

                await asyncio.gather(*(register(d) for d in devices))
                print(f"  [{kind}] {total} accounts registered in {time.perf_counter() - t0:.1f} s")
            else:
                devices = [NodeDevice(i) for i in range(total)]
            await asyncio.sleep(SETTLE_S)
            rss0, _ = proc_memory_mib(server.pid)
            print(f"  [{kind}] server RSS with no socket open: {rss0:.1f} MiB")
            for count in counts:
                cpu0 = proc_cpu_seconds(server.pid)
                t0 = time.perf_counter()
                more, failed = await connect_all(server.url, devices[len(sockets) : count], http)
                sockets += more
                took = time.perf_counter() - t0
                cpu = proc_cpu_seconds(server.pid) - cpu0
                await asyncio.sleep(SETTLE_S)
                rss, _ = proc_memory_mib(server.pid)
                per_kib = (rss - rss0) * 1024 / len(sockets)
                out[f"kib_{count}"] = per_kib
                print(
                    f"  [{kind}] {len(sockets):>6} idle sockets ({failed} failed): "
                    f"RSS {rss:7.1f} MiB -> {per_kib:5.1f} KiB per connection; "
                    f"the last {len(more)} signed in and connected in {took:.1f} s "
                    f"(server CPU {cpu:.1f} s)"
                )

            # Idle: only heartbeats (a ping every ping interval, 25 s on both servers).
            cpu0 = proc_cpu_seconds(server.pid)
            await asyncio.sleep(IDLE_CPU_S)
            idle_pct = (proc_cpu_seconds(server.pid) - cpu0) / IDLE_CPU_S * 100
            out["idle_cpu_pct"] = idle_pct
            print(
                f"  [{kind}] {len(sockets)} sockets idle for {IDLE_CPU_S:.0f} s: server CPU "
                f"{idle_pct:.2f}% of a core"
            )
            if skip_reconnect:
                return out
            # Restart: every client reconnects at once, with its token (as the SDK).
            for sock in sockets:
                await sock.close()
            sockets = []
            await server.stop()
            await server.start()
            cpu0 = proc_cpu_seconds(server.pid)
            t0 = time.perf_counter()
            sockets, failed = await connect_all(server.url, devices, http, reconnect=True)
            took = time.perf_counter() - t0
            cpu = proc_cpu_seconds(server.pid) - cpu0
            out["reconnect_s"] = took
            print(
                f"  [{kind}] restart: {len(sockets)} clients reconnected ({failed} failed) in "
                f"{took:.1f} s -> {len(sockets) / took:.0f} connections/s "
                f"(server CPU {cpu:.1f} s)"
            )
    finally:
        for sock in sockets:
            await sock.close()
        await server.stop()
    return out


async def run(args: argparse.Namespace) -> None:
    results = await run_both(
        "bisik-bench-idle-",
        lambda kind, server: run_kind(
            kind, server, args.counts, skip_reconnect=args.skip_reconnect
        ),
        skip_node=args.skip_node,
        skip_bisik=args.skip_bisik,
    )
    bisik, node = results.get("bisik"), results.get("node")
    for count in args.counts:
        key = f"kib_{count}"
        summary_line(
            f"idle memory per connection at {count}",
            f"{bisik[key]:.1f} KiB" if bisik else "skipped",
            baseline=f"{node[key]:.1f} KiB" if node else None,
        )
    summary_line(
        f"server CPU with {max(args.counts)} idle connections",
        f"{bisik['idle_cpu_pct']:.2f}% core" if bisik else "skipped",
        baseline=f"{node['idle_cpu_pct']:.2f}% core" if node else None,
    )
    if args.skip_reconnect:
        return
    summary_line(
        f"reconnect {max(args.counts)} clients after restart",
        f"{bisik['reconnect_s']:.1f} s" if bisik else "skipped",
        baseline=f"{node['reconnect_s']:.1f} s" if node else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--counts",
        type=lambda s: sorted(int(x) for x in s.split(",")),
        default=[1000, 5000],
        help="cumulative connection counts, comma separated",
    )
    parser.add_argument("--skip-node", action="store_true")
    parser.add_argument("--skip-bisik", action="store_true")
    parser.add_argument(
        "--deflate",
        action="store_true",
        help="clients offer permessage-deflate, as browsers do (default: not, as the SDK)",
    )
    parser.add_argument(
        "--skip-reconnect", action="store_true", help="measure memory only, no restart phase"
    )
    args = parser.parse_args()
    banner("bench_idle: memory per idle connection and mass reconnect, Bisik vs Node.js")
    if args.deflate:
        LightSocket.compression = "deflate"
    limit = raise_nofile()
    print(f"open-file limit: {limit} (servers inherit it)")
    if limit < max(args.counts) + 200:
        print(f"  WARNING: below {max(args.counts)} connections + margin; expect failures")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
