"""Relay throughput and latency: Bisik vs a Node.js Socket.IO 4 relay, same traffic.

Run: ``.venv/bin/python bench/bench_relay.py [--pairs 4] [--workers 2] [--duration 5]
[--loads 25,1000,2000,5000] [--size 200] [--window 32] [--skip-node] [--skip-bisik]``

Traffic: ``--workers`` load-generator PROCESSES (multiprocessing, spawn), each
with ``--pairs`` sender/receiver pairs in 1:1 conversations, against one server
process; the generator never shares an event loop with the server, and the CPU
of each side is reported (the machine has only 2 cores, so they still share it).

* Bisik: each sender and receiver is a real ``bisik.client.Client`` (own
  SQLCipher profile on tmpfs, real Olm encryption, receiver decrypts, stores and
  acks) against a real server process on SQLite (bench_latency.ServerProcess,
  database on disk). Latency: ``send_text`` to the receiver's ``MessageReceived``.
* Node baseline (bench/baselines/node-relay): python-socketio AsyncClients send
  ``send`` {to, id, body} with an ack; the relay forwards ``msg`` to the
  receiver, who answers ``delivered``. No storage, no crypto. Skipped with a
  message if node is not installed.

Phases, each for both servers: saturation first (each pair keeps ``--window``
messages in flight; delivered msgs/s over ``--duration``), then fixed offered
loads (open loop: messages are scheduled at ``rate`` and latency counts from the
SCHEDULED time, so a generator or server that falls behind shows it). A load
above 1.1x the saturation rate is skipped and said so: its backlog would grow
without bound and spill into the next phase. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvloop

from _common import banner, cpu_ticks, percentile, proc_cpu_seconds, steal_since, summary_line
from _node import run_both
from bench_latency import FAST_KDF, PASSWORD, TIMEOUT_S, ServerProcess, _exchange
from bisik._heap import settle_heap

DRAIN_S = 10.0
# An offered load above this multiple of the saturation rate is not run.
OVER_CAPACITY = 1.1


class Pairs:
    """Send/arrival bookkeeping shared by both kinds of load; subclasses do the I/O."""

    def __init__(self, pairs: int, size: int) -> None:
        self.pairs = pairs
        self.size = size
        self.sent: dict[int, float] = {}
        self.arrived: dict[int, float] = {}
        self.windows: list[asyncio.Semaphore] | None = None
        self.seq = 0

    def body(self, seq: int) -> str:
        head = f"{seq} "
        return head + "x" * max(1, self.size - len(head))

    def record_arrival(self, body: str) -> None:
        seq = int(body.split(" ", 1)[0])
        self.arrived[seq] = time.perf_counter()
        if self.windows is not None:
            self.windows[seq % self.pairs].release()

    async def send(self, pair: int, seq: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _reset(self) -> None:
        self.sent.clear()
        self.arrived.clear()

    async def _drain(self) -> None:
        deadline = time.perf_counter() + DRAIN_S
        while len(self.arrived) < len(self.sent) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)

    async def offered(self, rate: float, duration: float) -> dict[str, Any]:
        """Open loop at ``rate`` msgs/s for ``duration`` s, round robin over the pairs."""
        self._reset()
        cpu0 = proc_cpu_seconds()
        start = time.perf_counter()
        n = 0
        while (elapsed := time.perf_counter() - start) < duration:
            while n <= elapsed * rate:  # message n is due at n / rate
                seq = self.seq
                self.seq += 1
                # Pairs are seq % pairs, so arrivals map back to their window/pair.
                self.sent[seq] = start + n / rate
                await self.send(seq % self.pairs, seq)
                n += 1
            await asyncio.sleep(0.001)
        sent_wall = time.perf_counter() - start
        await self._drain()
        cpu = proc_cpu_seconds() - cpu0
        lat = [(self.arrived[s] - t0) * 1e3 for s, t0 in self.sent.items() if s in self.arrived]
        return {
            "sent": n,
            "sent_wall": sent_wall,
            "delivered": len(lat),
            "latencies": lat,
            "cpu": cpu,
        }

    async def saturate(self, window: int, duration: float) -> dict[str, Any]:
        """Each pair keeps ``window`` messages in flight; arrivals counted over ``duration``."""
        self._reset()
        self.windows = [asyncio.Semaphore(window) for _ in range(self.pairs)]
        stop = False

        async def pump(pair: int) -> None:
            assert self.windows is not None
            k = 0
            while not stop:
                await self.windows[pair].acquire()
                seq = (self.seq // self.pairs + k) * self.pairs + pair
                k += 1
                self.sent[seq] = time.perf_counter()
                await self.send(pair, seq)

        warm = min(1.0, duration / 4)
        tasks = [asyncio.create_task(pump(p)) for p in range(self.pairs)]
        await asyncio.sleep(warm)
        cpu0 = proc_cpu_seconds()
        t0 = time.perf_counter()
        await asyncio.sleep(duration)
        t1 = time.perf_counter()
        cpu = proc_cpu_seconds() - cpu0
        stop = True
        for pair in range(self.pairs):  # wake pumps blocked on a full window
            self.windows[pair].release()
        await asyncio.gather(*tasks, return_exceptions=True)
        in_window = [t for t in self.arrived.values() if t0 <= t < t1]
        lat = [
            (self.arrived[s] - ts) * 1e3
            for s, ts in self.sent.items()
            if s in self.arrived and t0 <= self.arrived[s] < t1
        ]
        await self._drain()
        self.windows = None
        self.seq = max(self.sent, default=0) + self.pairs
        return {"delivered": len(in_window), "wall": t1 - t0, "latencies": lat, "cpu": cpu}


class BisikPairs(Pairs):
    """Real ``bisik.client.Client`` senders and receivers."""

    def __init__(self, pairs: int, size: int, url: str, home: Path, tag: str) -> None:
        super().__init__(pairs, size)
        self.url, self.home, self.tag = url, home, tag
        self.senders: list[Any] = []
        self.receivers: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def setup(self) -> None:
        from bisik.client import Client

        async def make(name: str) -> Client:
            client = await Client.create_account(
                self.home / name,
                server_url=self.url,
                username=name,
                password=PASSWORD,
                kdf=FAST_KDF,
            )
            await client.connect()
            await asyncio.wait_for(client.synced.wait(), TIMEOUT_S)
            return client

        for i in range(self.pairs):
            self.senders.append(await make(f"{self.tag}s{i}"))
            self.receivers.append(await make(f"{self.tag}r{i}"))
        # Olm sessions established both ways and device lists cached before timing.
        for sender, receiver in zip(self.senders, self.receivers, strict=True):
            await _exchange(sender, receiver, None, 2)
            await _exchange(receiver, sender, None, 2)
        self._tasks = [asyncio.create_task(self._watch(r)) for r in self.receivers]

    async def _watch(self, client: Any) -> None:
        from bisik.client import MessageReceived

        inbox = client.subscribe()
        while True:
            event = await inbox.get()
            if isinstance(event, MessageReceived):
                self.record_arrival(event.message.body)

    async def send(self, pair: int, seq: int) -> None:
        await self.senders[pair].send_text(self.receivers[pair].username, self.body(seq))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for client in self.senders + self.receivers:
            with contextlib.suppress(Exception):
                await client.close()


class NodePairs(Pairs):
    """python-socketio AsyncClients against the Node relay: same payloads, acks."""

    def __init__(self, pairs: int, size: int, url: str, tag: str) -> None:
        super().__init__(pairs, size)
        self.url, self.tag = url, tag
        self.senders: list[Any] = []
        self.receivers: list[Any] = []
        self.acked = 0

    async def setup(self) -> None:
        import socketio

        async def make(name: str, receiving: bool) -> socketio.AsyncClient:
            sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
            if receiving:

                async def on_msg(data: dict[str, Any]) -> None:
                    self.record_arrival(data["body"])
                    await sio.emit("delivered", {"id": data["id"]})

                sio.on("msg", on_msg)
            await sio.connect(self.url, auth={"user": name, "token": "t"}, transports=["websocket"])
            return sio

        for i in range(self.pairs):
            self.senders.append(await make(f"{self.tag}s{i}", False))
            self.receivers.append(await make(f"{self.tag}r{i}", True))

    def _ack(self, *_: Any) -> None:
        self.acked += 1

    async def send(self, pair: int, seq: int) -> None:
        await self.senders[pair].emit(
            "send",
            {"to": f"{self.tag}r{pair}", "id": str(seq), "body": self.body(seq)},
            callback=self._ack,
        )

    async def close(self) -> None:
        for sio in self.senders + self.receivers:
            with contextlib.suppress(Exception):
                await sio.disconnect()


def worker_main(conn: Connection, kind: str, url: str, index: int, args: dict[str, Any]) -> None:
    # uvloop, as the Bisik server runs on: the generator's own overhead is
    # smaller, for both the Bisik and the Node runs.
    uvloop.run(_worker(conn, kind, url, index, args))


async def _worker(conn: Connection, kind: str, url: str, index: int, args: dict[str, Any]) -> None:
    tag = f"w{index}"
    with tempfile.TemporaryDirectory(prefix="bisik-relay-", dir=args["homes"]) as home:
        pairs: BisikPairs | NodePairs
        if kind == "bisik":
            pairs = BisikPairs(args["pairs"], args["size"], url, Path(home), tag)
        else:
            pairs = NodePairs(args["pairs"], args["size"], url, tag)
        t0 = time.perf_counter()
        await pairs.setup()
        settle_heap()  # as `bisik chat` does once set up
        conn.send(("ready", os.getpid(), time.perf_counter() - t0))
        try:
            while True:
                command = await asyncio.to_thread(conn.recv)
                if command[0] == "offered":
                    conn.send(await pairs.offered(command[1], command[2]))
                elif command[0] == "saturate":
                    conn.send(await pairs.saturate(command[1], command[2]))
                else:
                    break
        finally:
            await pairs.close()


class Workers:
    """The load-generator processes of one run, driven phase by phase."""

    def __init__(self, kind: str, url: str, args: argparse.Namespace) -> None:
        ctx = multiprocessing.get_context("spawn")
        opts = {"pairs": args.pairs, "size": args.size, "homes": args.homes}
        self.conns: list[Connection] = []
        self.procs = []
        for index in range(args.workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, kind, url, index, opts))
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    async def ready(self) -> float:
        answers = [await asyncio.to_thread(c.recv) for c in self.conns]
        return max(a[2] for a in answers)

    async def phase(self, *command: Any) -> list[dict[str, Any]]:
        for conn in self.conns:
            conn.send(command)
        return [await asyncio.to_thread(c.recv) for c in self.conns]

    async def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        for proc in self.procs:
            await asyncio.to_thread(proc.join, 30)
            if proc.is_alive():
                proc.kill()


def _merge(results: list[dict[str, Any]]) -> tuple[list[float], int, float]:
    lat = [ms for r in results for ms in r["latencies"]]
    return lat, sum(r["delivered"] for r in results), sum(r["cpu"] for r in results)


async def run_kind(kind: str, server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    await server.start()
    workers = Workers(kind, server.url, args)
    out: dict[str, Any] = {}
    try:
        setup_s = await workers.ready()
        print(
            f"  [{kind}] server pid {server.pid}; {args.workers} generator processes x "
            f"{args.pairs} pairs ready in {setup_s:.1f} s"
        )
        cpu0, ticks0 = proc_cpu_seconds(server.pid), cpu_ticks()
        t0 = time.perf_counter()
        results = await workers.phase("saturate", args.window, args.duration)
        wall = time.perf_counter() - t0
        server_cpu = proc_cpu_seconds(server.pid) - cpu0
        lat, delivered, gen_cpu = _merge(results)
        window_s = max(r["wall"] for r in results)
        rate = delivered / window_s
        out["saturation"] = rate
        server_share = server_cpu / wall  # over the whole phase (warm-up and drain too)
        print(
            f"  [{kind}] saturation (window {args.window}/pair): {rate:7.0f} delivered msgs/s, "
            f"p50 {percentile(lat, 50):.1f} p99 {percentile(lat, 99):.1f} ms; CPU server "
            f"{server_share:.0%} of a core (~{server_share / max(rate, 1) * 1e3:.2f} ms/msg), "
            f"generators {gen_cpu / window_s:.0%}; steal {steal_since(ticks0):.0%}"
        )
        for load in args.loads:
            if load > rate * OVER_CAPACITY:
                print(
                    f"  [{kind}] offered {load:>5}/s: skipped, over the {rate:.0f} msgs/s "
                    "this server delivered at saturation (its backlog would only grow)"
                )
                continue
            cpu0, ticks0 = proc_cpu_seconds(server.pid), cpu_ticks()
            t0 = time.perf_counter()
            results = await workers.phase("offered", load / args.workers, args.duration)
            wall = time.perf_counter() - t0
            server_cpu = proc_cpu_seconds(server.pid) - cpu0
            lat, delivered, gen_cpu = _merge(results)
            sent = sum(r["sent"] for r in results)
            achieved = sent / max(r["sent_wall"] for r in results)
            lost = sent - delivered
            p50, p99 = percentile(lat, 50), percentile(lat, 99)
            out[load] = {"p50": p50, "p99": p99, "achieved": achieved}
            print(
                f"  [{kind}] offered {load:>5}/s (achieved {achieved:6.0f}/s): "
                f"p50 {p50:7.2f}  p99 {p99:8.2f}  max {max(lat, default=float('nan')):8.2f} ms"
                f"  {'' if not lost else f'{lost} not delivered within {DRAIN_S:.0f} s  '}"
                f"CPU server {server_cpu / wall:.0%}, generators {gen_cpu / wall:.0%} of a core; "
                f"steal {steal_since(ticks0):.0%}"
            )
    finally:
        await workers.stop()
        await server.stop()
    return out


async def run(args: argparse.Namespace) -> None:
    results = await run_both(
        "bisik-bench-relay-",
        lambda kind, server: run_kind(kind, server, args),
        skip_node=args.skip_node,
        skip_bisik=args.skip_bisik,
    )
    bisik, node = results.get("bisik"), results.get("node")

    def fig(result: dict[str, Any] | None, key: Any, field: str | None, fmt: str) -> str | None:
        if result is None:
            return None
        if key not in result:
            return "over capacity"
        value = result[key] if field is None else result[key][field]
        return fmt.format(value)

    summary_line(
        "relay saturation delivered msgs/s",
        fig(bisik, "saturation", None, "{:.0f} msgs/s") or "skipped",
        baseline=fig(node, "saturation", None, "{:.0f} msgs/s"),
        higher_is_better=True,
    )
    for load in args.loads:
        for pct in ("p50", "p99"):
            summary_line(
                f"relay {pct} latency at {load} msgs/s offered",
                fig(bisik, load, pct, "{:.1f} ms") or "skipped",
                baseline=fig(node, load, pct, "{:.1f} ms"),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4, help="sender/receiver pairs per worker")
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    parser.add_argument(
        "--loads",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[25, 1000, 2000, 5000],
        help="offered loads, msgs/s, comma separated (25: a light load both servers carry)",
    )
    parser.add_argument("--size", type=int, default=200, help="plaintext bytes per message")
    parser.add_argument("--window", type=int, default=32, help="in flight per pair (saturation)")
    parser.add_argument("--homes", default="/dev/shm", help="where client profiles live")
    parser.add_argument("--skip-node", action="store_true")
    parser.add_argument("--skip-bisik", action="store_true")
    args = parser.parse_args()
    banner("bench_relay: 1:1 relay throughput and latency, Bisik vs Node.js Socket.IO")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
