"""The client's worker: steps run one at a time in order; while a step waits
for the network its interlude runs, but never ahead of a queued in-order step;
stopping ends its timers and periodic checks."""

from __future__ import annotations

import asyncio

from bisik.client._errors import NotConnected
from bisik.client._worker import Step, Worker


async def test_steps_run_in_order_and_a_failing_one_does_not_stop_the_rest() -> None:
    worker = Worker("t")
    ran: list[str] = []

    async def record(data: object) -> None:
        ran.append(str(data))
        if data == "boom":
            raise ValueError("a bug in one step")
        if data == "offline":
            raise NotConnected("gone")

    worker.handle(Step.FLUSH, record)
    worker.start()
    for data in ("a", "boom", "offline", "b"):
        worker.submit(Step.FLUSH, data)
    await asyncio.sleep(0.05)
    await worker.stop()
    assert ran == ["a", "boom", "offline", "b"]


async def test_the_interlude_runs_while_waiting_but_not_ahead_of_an_in_order_step() -> None:
    worker = Worker("t")
    pushed: list[str] = []
    opened: list[str] = []
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def open_pushed() -> None:
        opened.extend(pushed)
        pushed.clear()

    async def send(_: object) -> None:
        assert await worker.waiting(answer) == "stored"

    resynced: list[list[str]] = []

    async def resync(_: object) -> None:
        resynced.append(list(opened))

    worker.interlude(lambda: bool(pushed), open_pushed)
    worker.handle(Step.FLUSH, send)
    worker.handle(Step.RESYNC, resync)
    worker.start()
    worker.submit(Step.FLUSH)
    await asyncio.sleep(0.01)  # the send waits for its answer
    pushed.append("m1")
    worker.poke()
    await asyncio.sleep(0.01)
    assert opened == ["m1"]  # opened while the send waited
    worker.submit(Step.RESYNC)  # now something must not be overtaken
    pushed.append("m2")
    worker.poke()
    await asyncio.sleep(0.01)
    assert opened == ["m1"]
    answer.set_result("stored")
    await asyncio.sleep(0.01)
    assert resynced == [["m1"]]  # the resync ran before m2 was opened
    await worker.stop()


async def test_stop_cancels_timers_and_periodic_checks() -> None:
    worker = Worker("t")
    ticks: list[int] = []
    fired: list[object] = []

    async def flush(data: object) -> None:
        fired.append(data)

    worker.handle(Step.FLUSH, flush)
    worker.repeat(0.01, lambda: ticks.append(1))
    worker.start()
    late = worker.submit_later(60, Step.FLUSH, "late")
    while not ticks:
        await asyncio.sleep(0.01)
    await worker.stop()
    assert late.cancelled()
    seen = len(ticks)
    await asyncio.sleep(0.05)
    assert len(ticks) == seen and fired == []
