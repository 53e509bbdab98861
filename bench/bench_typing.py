"""Typing indicators at scale: 1,000 connected devices, 500 conversations, one server.

Run: ``.venv/bin/python bench/bench_typing.py [--devices 1000] [--workers 2]
[--concurrency 50] [--samples 1000] [--serial 200] [--idle 5]``

The server runs in a SEPARATE process, as deployed (``python -m bisik.cli
server``, one uvicorn process, SQLite in a temp dir; the SDK keeps an idle HTTP
connection at most 2 s, under uvicorn's 5 s keep-alive, so no request races the
server closing it). ``--devices``
``bisik.client.Client`` profiles (each its own SQLCipher database and its own
Socket.IO connection) are split across ``--workers`` worker processes, each
with its own asyncio event loop; both members of a conversation live in the
same worker, so a latency is always read off one clock. This process only
starts the server and the workers and runs the phases in lock step (a phase
starts in every worker once all have finished the previous one):

1. create: ``Client.create_account`` (fast KDF: t=1, m=8 MiB, p=1) for every
   device, 4 at a time per worker;
2. connect: ``connect()`` and wait for ``synced``, 25 at a time per worker;
3. first messages: in every conversation a text each way (the server records
   the conversation, the Olm sessions get established), ``--concurrency``
   conversations at a time, each until both delivered receipts are back, so
   nothing is in flight afterwards;
4. backup: ``backup_now()`` on every device, so the client's once-a-minute
   backup (due after the first messages) does not run during the typing phases;
5. idle: ``--idle`` seconds with everyone connected (the server's background cost);
6. typing serial: ``--serial`` samples, one conversation at a time (worker 0 only);
7. typing batched: ``--concurrency`` conversations start typing at once (split
   evenly over the workers, each worker waits for its batch, then starts the
   next one); rounds alternate the direction (first member, then second)
   until every conversation typed ``ceil(samples / conversations)`` times;
8. close every client.

A typing sample is the time from ``set_typing(peer, True)`` to the partner's
``TypingChanged(typing=True)`` from ``subscribe()``. The sender's 3 s typing
throttle is reset before each call (``client._signals._last_start.clear()``),
so no sample is dropped.

Per phase: wall time, CPU seconds of the server process and of all worker
processes (from /proc/<pid>/stat), and resident memory (VmRSS/VmHWM).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from _common import banner, percentile, proc_cpu_seconds, proc_memory_mib, summary_line
from bench_latency import FAST_KDF, PASSWORD, ServerProcess
from bisik.client import Client, Event, MessageReceived, ReceiptUpdated, TypingChanged

TIMEOUT_S = 60.0
# A phase that takes longer than this in any worker means something is stuck.
PHASE_TIMEOUT_S = 1800.0
PHASES = (
    "create",
    "connect",
    "first messages",
    "backup",
    "idle",
    "typing serial",
    "typing batched",
    "close",
)
CREATE_PARALLEL = 4  # per worker; account creation is CPU-bound in the client
CONNECT_PARALLEL = 25  # per worker
FEW_MINUTES_S = 300.0


# -- worker process -----------------------------------------------------------------


class Worker:
    """The clients of some conversations, on one event loop in one process."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.root = Path(cfg["root"])
        self.names = [
            (f"c{k:04d}-a", f"c{k:04d}-b")
            for k in range(cfg["first_conversation"], cfg["first_conversation"] + cfg["count"])
        ]
        self.pairs: list[tuple[Client, Client]] = []
        self.clients: list[Client] = []
        self.consumers: list[asyncio.Task[None]] = []
        # Futures keyed by what they wait for; created by whichever side comes first.
        self.futures: dict[tuple[str, str], asyncio.Future[float]] = {}
        # Typing waiters exist only while a sample is being measured.
        self.typing_waiters: dict[tuple[str, str], asyncio.Future[float]] = {}

    def _future(self, key: tuple[str, str]) -> asyncio.Future[float]:
        fut = self.futures.get(key)
        if fut is None:
            fut = self.futures[key] = asyncio.get_running_loop().create_future()
        return fut

    async def _consume(self, client: Client, queue: asyncio.Queue[Event]) -> None:
        while True:
            event = await queue.get()
            now = time.perf_counter()
            if isinstance(event, TypingChanged):
                if event.typing:
                    waiter = self.typing_waiters.pop((client.username, event.username), None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(now)
            elif isinstance(event, MessageReceived):
                fut = self._future(("received", event.message.id))
                if not fut.done():
                    fut.set_result(now)
            elif isinstance(event, ReceiptUpdated) and event.kind == "delivered":
                for message_id in event.message_ids:
                    fut = self._future(("delivered", message_id))
                    if not fut.done():
                        fut.set_result(now)

    async def _wait(self, key: tuple[str, str]) -> float:
        fut = self._future(key)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), TIMEOUT_S)
        finally:
            self.futures.pop(key, None)

    # -- phases ---------------------------------------------------------------

    async def create(self) -> dict[str, Any]:
        gate = asyncio.Semaphore(CREATE_PARALLEL)

        async def one(name: str) -> Client:
            async with gate:
                return await Client.create_account(
                    self.root / "homes" / name,
                    server_url=self.cfg["server_url"],
                    username=name,
                    password=PASSWORD,
                    kdf=FAST_KDF,
                )

        created = await asyncio.gather(*(one(n) for pair in self.names for n in pair))
        self.clients = list(created)
        self.pairs = list(zip(self.clients[0::2], self.clients[1::2], strict=True))
        return {}

    async def connect(self) -> dict[str, Any]:
        gate = asyncio.Semaphore(CONNECT_PARALLEL)

        async def one(client: Client) -> None:
            queue = client.subscribe()
            self.consumers.append(asyncio.create_task(self._consume(client, queue)))
            async with gate:
                await client.connect(timeout=TIMEOUT_S)
                await asyncio.wait_for(client.synced.wait(), TIMEOUT_S)

        await asyncio.gather(*(one(c) for c in self.clients))
        return {}

    async def first_messages(self) -> dict[str, Any]:
        gate = asyncio.Semaphore(self.cfg["batch"])
        first_ms: list[float] = []
        reply_ms: list[float] = []

        async def one(a: Client, b: Client) -> None:
            async with gate:
                t0 = time.perf_counter()
                hello = await a.send_text(b.username, "hello, first message")
                first_ms.append((await self._wait(("received", hello.id)) - t0) * 1e3)
                t0 = time.perf_counter()
                reply = await b.send_text(a.username, "hi, a reply")
                reply_ms.append((await self._wait(("received", reply.id)) - t0) * 1e3)
                # The delivered receipts are the last traffic this exchange causes.
                await self._wait(("delivered", hello.id))
                await self._wait(("delivered", reply.id))

        await asyncio.gather(*(one(a, b) for a, b in self.pairs))
        return {"first_ms": first_ms, "reply_ms": reply_ms}

    async def backup(self) -> dict[str, Any]:
        """Upload every backup now: the client backs up at most once a minute
        when its state changed, and that must not happen during the typing phases
        (typing itself does not change what is backed up)."""
        gate = asyncio.Semaphore(CONNECT_PARALLEL)

        async def one(client: Client) -> None:
            async with gate:
                await client.drain_outbox(TIMEOUT_S)
                await client.backup_now()

        await asyncio.gather(*(one(c) for c in self.clients))
        return {}

    async def idle(self) -> dict[str, Any]:
        await asyncio.sleep(self.cfg["idle"])
        return {}

    async def _typing_batch(
        self, batch: list[tuple[Client, Client]], latency_ms: list[float]
    ) -> int:
        """Every (sender, receiver) starts typing at once; returns how many were missed."""
        loop = asyncio.get_running_loop()
        pending: list[tuple[float, asyncio.Future[float], tuple[str, str]]] = []
        for sender, receiver in batch:
            key = (receiver.username, sender.username)
            waiter: asyncio.Future[float] = loop.create_future()
            self.typing_waiters[key] = waiter
            sender._signals._last_start.clear()  # the 3 s throttle
            t0 = time.perf_counter()
            sender.set_typing(receiver.username, True)
            pending.append((t0, waiter, key))
        await asyncio.wait([w for _, w, _ in pending], timeout=TIMEOUT_S)
        missing = 0
        for t0, waiter, key in pending:
            if waiter.done():
                latency_ms.append((waiter.result() - t0) * 1e3)
            else:
                missing += 1
                waiter.cancel()
                self.typing_waiters.pop(key, None)
        return missing

    def _direction(self, pair: tuple[Client, Client], round_no: int) -> tuple[Client, Client]:
        a, b = pair
        return (a, b) if round_no % 2 == 0 else (b, a)

    async def typing_serial(self) -> dict[str, Any]:
        latency_ms: list[float] = []
        missing = 0
        for k in range(self.cfg["serial"]):
            pair = self.pairs[k % len(self.pairs)]
            batch = [self._direction(pair, k // len(self.pairs))]
            missing += await self._typing_batch(batch, latency_ms)
        return {"latency_ms": latency_ms, "missing": missing}

    async def typing_batched(self) -> dict[str, Any]:
        size = self.cfg["batch"]
        latency_ms: list[float] = []
        missing = 0
        for round_no in range(self.cfg["rounds"]):
            for start in range(0, len(self.pairs), size):
                batch = [self._direction(p, round_no) for p in self.pairs[start : start + size]]
                missing += await self._typing_batch(batch, latency_ms)
        return {"latency_ms": latency_ms, "missing": missing}

    async def close(self) -> dict[str, Any]:
        gate = asyncio.Semaphore(CONNECT_PARALLEL)

        async def one(client: Client) -> None:
            async with gate:
                await client.close()

        await asyncio.gather(*(one(c) for c in self.clients), return_exceptions=True)
        for task in self.consumers:
            task.cancel()
        await asyncio.gather(*self.consumers, return_exceptions=True)
        return {}


async def _worker(conn: Connection, cfg: dict[str, Any]) -> None:
    worker = Worker(cfg)
    steps: dict[str, Callable[[], Coroutine[Any, Any, dict[str, Any]]]] = {
        "create": worker.create,
        "connect": worker.connect,
        "first messages": worker.first_messages,
        "backup": worker.backup,
        "idle": worker.idle,
        "typing serial": worker.typing_serial,
        "typing batched": worker.typing_batched,
        "close": worker.close,
    }
    rss0 = proc_memory_mib()[0]
    try:
        for phase in PHASES:
            order = await asyncio.to_thread(conn.recv)
            if order != phase:
                raise RuntimeError(f"worker expected phase {phase!r}, got {order!r}")
            cpu0 = proc_cpu_seconds()
            t0 = time.perf_counter()
            report = await steps[phase]()
            rss, peak = proc_memory_mib()
            report.update(
                wall=time.perf_counter() - t0,
                cpu=proc_cpu_seconds() - cpu0,
                rss0=rss0,
                rss=rss,
                peak=peak,
            )
            conn.send(("done", phase, report))
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        # Best effort: no half-open profiles or sockets left behind.
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(worker.close(), 30)
        raise


def worker_main(conn: Connection, cfg: dict[str, Any]) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_worker(conn, cfg))


# -- coordinating process ------------------------------------------------------------


def raise_open_file_limit(wanted: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class PhaseResult:
    def __init__(self, name: str) -> None:
        self.name = name
        self.wall = 0.0
        self.server_cpu = 0.0
        self.server_rss = 0.0
        self.reports: list[dict[str, Any]] = []

    @property
    def client_cpu(self) -> float:
        return sum(r["cpu"] for r in self.reports)

    def merged(self, key: str) -> list[Any]:
        return [v for r in self.reports for v in r.get(key, [])]


def run_phase(
    name: str,
    server: ServerProcess,
    conns: list[Connection],
    procs: list[multiprocessing.process.BaseProcess],
) -> PhaseResult:
    result = PhaseResult(name)
    cpu0 = proc_cpu_seconds(server.pid)
    t0 = time.perf_counter()
    for conn in conns:
        conn.send(name)
    reports: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while len(reports) < len(conns):
        if time.monotonic() > deadline:
            raise RuntimeError(f"phase {name!r} did not finish in {PHASE_TIMEOUT_S:.0f} s")
        for conn in wait([c for i, c in enumerate(conns) if i not in reports], timeout=1.0):
            assert isinstance(conn, Connection)
            message = conn.recv()
            if message[0] == "error":
                raise RuntimeError(f"a worker failed in phase {name!r}:\n{message[1]}")
            reports[conns.index(conn)] = message[2]
        for i, proc in enumerate(procs):
            if i not in reports and not proc.is_alive() and not conns[i].poll():
                raise RuntimeError(f"worker {i} exited (code {proc.exitcode}) in phase {name!r}")
    result.wall = time.perf_counter() - t0
    result.server_cpu = proc_cpu_seconds(server.pid) - cpu0
    result.server_rss = proc_memory_mib(server.pid)[0]
    result.reports = [reports[i] for i in range(len(conns))]
    return result


def _latency_line(label: str, ms: list[float]) -> str:
    if not ms:
        return f"    {label:<38} no samples"
    return (
        f"    {label:<38} p50 {percentile(ms, 50):7.2f}  p90 {percentile(ms, 90):7.2f}  "
        f"p99 {percentile(ms, 99):7.2f}  max {max(ms):7.2f}  mean {sum(ms) / len(ms):7.2f} ms"
        f"  (n={len(ms)})"
    )


def _phase_line(phase: PhaseResult, per: int, unit: str) -> str:
    return (
        f"  {phase.name:<15} {phase.wall:7.2f} s wall  "
        f"server CPU {phase.server_cpu:6.2f} s ({phase.server_cpu / per * 1e3:5.2f} ms/{unit})  "
        f"clients CPU {phase.client_cpu:6.2f} s ({phase.client_cpu / per * 1e3:5.2f} ms/{unit})"
    )


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    devices = args.devices
    conversations = devices // 2
    workers = max(1, min(args.workers, conversations))
    rounds = max(1, math.ceil(args.samples / conversations))
    batch = max(1, math.ceil(args.concurrency / workers))
    share, extra = divmod(conversations, workers)
    counts = [share + (1 if i < extra else 0) for i in range(workers)]
    at_once = sum(min(batch, c) for c in counts)  # conversations typing at the same time
    wanted_files = max(4096, 8 * devices + 1024)
    limit = raise_open_file_limit(wanted_files)

    with tempfile.TemporaryDirectory(prefix="bisik-bench-typing-") as tmp:
        root = Path(tmp)
        server = ServerProcess(root / "server")
        asyncio.run(server.start())
        procs: list[multiprocessing.process.BaseProcess] = []
        conns: list[Connection] = []
        phases: dict[str, PhaseResult] = {}
        try:
            print(f"server:  separate process pid {server.pid}: {' '.join(server.command[1:])}")
            print(f"         SQLite in {server.data_dir}")
            ctx = multiprocessing.get_context("spawn")
            first = 0
            for i, count in enumerate(counts):
                parent, child = ctx.Pipe()
                cfg = {
                    "root": str(root / f"worker{i}"),
                    "server_url": server.url,
                    "first_conversation": first,
                    "count": count,
                    "batch": batch,
                    "rounds": rounds,
                    "serial": args.serial if i == 0 else 0,
                    "idle": args.idle,
                }
                proc = ctx.Process(target=worker_main, args=(child, cfg), name=f"bench-worker-{i}")
                proc.start()
                child.close()
                procs.append(proc)
                conns.append(parent)
                first += count
            print(
                f"clients: {devices} devices in {conversations} two-person conversations, "
                f"{workers} worker process(es) (pids {', '.join(str(p.pid) for p in procs)}), "
                "one asyncio loop each; both members of a conversation in the same worker"
            )
            print(
                f"typing:  serial: {args.serial} samples, one conversation at a time (worker 0); "
                f"batched: {conversations * rounds} samples, {rounds} round(s) over every "
                f"conversation, directions alternating, {at_once} conversations "
                f"typing at once (up to {batch} per worker)"
            )
            low = "" if limit[0] >= wanted_files else f" (LOW: about {wanted_files} wanted)"
            print(f"open-file limit: soft {limit[0]}, hard {limit[1]}{low}")
            print()
            for name in PHASES:
                print(f"  ... {name}", flush=True)
                phases[name] = run_phase(name, server, conns, procs)
        except RuntimeError as exc:
            print(f"FAILED: {exc}")
            tail = server.log_path.read_text(errors="replace")[-3000:]
            if tail:
                print(f"server log ends with:\n{tail}")
            return 1
        finally:
            for conn in conns:
                conn.close()  # a worker still waiting for a phase closes its clients
            for proc in procs:
                proc.join(timeout=60)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=10)
            server_rss_peak = proc_memory_mib(server.pid)[1]
            asyncio.run(server.stop())
    total = time.perf_counter() - started

    serial, batched = phases["typing serial"], phases["typing batched"]
    serial_ms, batched_ms = serial.merged("latency_ms"), batched.merged("latency_ms")
    serial_missing = sum(r["missing"] for r in serial.reports)
    batched_missing = sum(r["missing"] for r in batched.reports)
    print()
    print("  Phases (CPU: the server process; clients = sum over the worker processes)")
    print(_phase_line(phases["create"], devices, "device"))
    print(_phase_line(phases["connect"], devices, "device"))
    print(_phase_line(phases["first messages"], 2 * conversations, "msg"))
    print(_phase_line(phases["backup"], devices, "device"))
    idle = phases["idle"]
    print(
        f"  {idle.name:<15} {idle.wall:7.2f} s wall  server CPU {idle.server_cpu:6.2f} s "
        f"({idle.server_cpu / idle.wall:.1%} of a core)  clients CPU {idle.client_cpu:6.2f} s "
        f"({idle.client_cpu / idle.wall:.1%} of a core)"
    )
    print(_phase_line(serial, max(len(serial_ms) + serial_missing, 1), "event"))
    print(_phase_line(batched, max(len(batched_ms) + batched_missing, 1), "event"))
    print(_phase_line(phases["close"], devices, "device"))
    print(
        "    (first messages: a text each way per conversation, until both delivered "
        "receipts are back; backup: backup_now on every device, so that the once-a-minute "
        "backup does not run during the typing phases)"
    )
    print()
    print(f"  First messages ({at_once} conversations at a time), ms")
    print(
        _latency_line(
            "a -> b, new Olm session (key claim)", phases["first messages"].merged("first_ms")
        )
    )
    print(_latency_line("b -> a, reply", phases["first messages"].merged("reply_ms")))
    print()
    print("  Typing: set_typing(peer, True) -> partner's TypingChanged(typing=True), ms")
    print(_latency_line("one conversation at a time", serial_ms))
    print(_latency_line(f"{at_once} conversations at once", batched_ms))
    print(
        f"    missing (no event within {TIMEOUT_S:.0f} s): {serial_missing} serial, "
        f"{batched_missing} batched; batched throughput "
        f"{len(batched_ms) / batched.wall:.0f} events/s"
    )
    print()
    print("  Memory (resident)")
    rss_line = ", ".join(f"{p.name} {p.server_rss:.0f}" for p in phases.values())
    print(f"    server after each phase (MiB): {rss_line}")
    grown = phases["connect"].server_rss - phases["create"].server_rss
    print(
        f"    server peak {server_rss_peak:.0f} MiB; growth while {devices} devices connected "
        f"{grown:.0f} MiB ({grown * 1024 / devices:.0f} KiB/device)"
    )
    for i, report in enumerate(batched.reports):
        per_client = (report["rss"] - report["rss0"]) * 1024 / (2 * counts[i])
        print(
            f"    worker {i} ({2 * counts[i]} clients): {report['rss0']:.0f} MiB at start, "
            f"{report['rss']:.0f} MiB after typing ({per_client:.0f} KiB/client), "
            f"peak {report['peak']:.0f} MiB"
        )
    print()
    print(f"  total wall time {total:.1f} s")
    if total > FEW_MINUTES_S:
        print(f"  NOTE: this run took {total / 60:.1f} min, more than the few minutes aimed at")

    def ms(value: float) -> str:
        return f"{value:.2f} ms"

    n = f"{devices} dev"
    summary_line(f"typing p50, serial ({n})", ms(percentile(serial_ms, 50)))
    summary_line(f"typing p99, serial ({n})", ms(percentile(serial_ms, 99)))
    summary_line(f"typing p50, {at_once} at once ({n})", ms(percentile(batched_ms, 50)))
    summary_line(f"typing p99, {at_once} at once ({n})", ms(percentile(batched_ms, 99)))
    summary_line(f"typing max, {at_once} at once ({n})", ms(max(batched_ms, default=float("nan"))))
    summary_line(
        f"typing server CPU per event ({n})",
        ms(batched.server_cpu / max(len(batched_ms), 1) * 1e3),
    )
    summary_line(f"server peak RSS ({n})", f"{server_rss_peak:.0f} MiB")
    setup = sum(phases[p].wall for p in ("create", "connect", "first messages"))
    summary_line(f"set-up wall: create+connect+first msgs ({n})", f"{setup:.1f} s")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000, help="connected devices (even)")
    parser.add_argument("--workers", type=int, default=2, help="client worker processes")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="conversations typing at once (all workers)"
    )
    parser.add_argument(
        "--samples", type=int, default=1000, help="at least this many batched typing samples"
    )
    parser.add_argument(
        "--idle", type=float, default=5.0, help="seconds all connected and idle, before typing"
    )
    parser.add_argument(
        "--serial", type=int, default=200, help="typing samples one conversation at a time"
    )
    args = parser.parse_args()
    if args.devices < 2 or args.devices % 2:
        parser.error("--devices must be an even number, at least 2")
    if min(args.workers, args.concurrency, args.samples) < 1 or min(args.serial, args.idle) < 0:
        parser.error(
            "--workers, --concurrency, --samples must be positive, --serial, --idle not negative"
        )
    banner("bench_typing: typing indicator latency with many connected devices")
    sys.exit(run(args))


if __name__ == "__main__":
    main()
