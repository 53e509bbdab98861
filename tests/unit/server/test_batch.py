import asyncio

import pytest

from bisik.server.stores._batch import Batcher


async def test_requests_arriving_during_a_batch_share_the_next_one() -> None:
    batches: list[list[int]] = []
    gate = asyncio.Event()

    async def run(batch: list[int]) -> list[int]:
        batches.append(batch)
        if len(batches) == 1:
            await gate.wait()
        return [x * 10 for x in batch]

    batcher: Batcher[int, int] = Batcher(run)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.submit(x)) for x in (2, 3, 4)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == 10
    assert await asyncio.gather(*rest) == [20, 30, 40]
    assert batches == [[1], [2, 3, 4]]


async def test_a_failed_batch_fails_each_of_its_requests_only() -> None:
    async def run(batch: list[int]) -> list[int]:
        if 0 in batch:
            raise ValueError("bad batch")
        return batch

    batcher: Batcher[int, int] = Batcher(run, limit=2)
    results = await asyncio.gather(
        batcher.submit(0), batcher.submit(1), batcher.submit(2), return_exceptions=True
    )
    assert isinstance(results[0], ValueError) and isinstance(results[1], ValueError)
    assert results[2] == 2
    with pytest.raises(ValueError):
        await batcher.submit(0)
    assert await batcher.submit(5) == 5


async def test_an_exception_in_a_requests_place_fails_that_request_alone() -> None:
    async def run(batch: list[int]) -> list[int | Exception]:
        return [ValueError(f"bad {x}") if x < 0 else x for x in batch]

    batcher: Batcher[int, int] = Batcher(run)
    results = await asyncio.gather(
        batcher.submit(1), batcher.submit(-1), batcher.submit(2), return_exceptions=True
    )
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad -1"
