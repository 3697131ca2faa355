"""enqueue from plain threads, asyncio and trio: blocking, thread-safe, no event loop needed."""

from __future__ import annotations

import asyncio
import threading

import trio

import backrun
from tests.conftest import Numbers


def _register(engine: backrun.Engine) -> list[int]:
    seen: list[int] = []
    lock = threading.Lock()

    @engine.handler(name="collect")
    def collect(payload: Numbers) -> None:
        with lock:
            seen.append(payload.a)

    return seen


def test_enqueue_from_sixteen_threads_at_once(engine: backrun.Engine) -> None:
    seen = _register(engine)
    barrier = threading.Barrier(16)
    ids: list[str] = []
    lock = threading.Lock()

    def produce(base: int) -> None:
        barrier.wait()
        for i in range(100):
            job = engine.enqueue("collect", {"a": base * 100 + i})
            with lock:
                ids.append(job.id)

    with engine.running():
        threads = [threading.Thread(target=produce, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    engine.run_until_idle(timeout=30)
    assert len(set(ids)) == 1600
    assert sorted(seen) == list(range(1600))


def test_enqueue_from_asyncio_through_to_thread(engine: backrun.Engine) -> None:
    seen = _register(engine)

    async def main() -> list[backrun.Job]:
        return await asyncio.gather(
            *(asyncio.to_thread(engine.enqueue, "collect", {"a": i}) for i in range(50))
        )

    jobs = asyncio.run(main())
    assert len({j.id for j in jobs}) == 50
    engine.run_until_idle(timeout=30)
    assert sorted(seen) == list(range(50))


def test_enqueue_from_trio_through_to_thread(engine: backrun.Engine) -> None:
    seen = _register(engine)
    jobs: list[backrun.Job] = []

    async def produce(i: int) -> None:
        jobs.append(await trio.to_thread.run_sync(engine.enqueue, "collect", {"a": i}))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(produce, i)

    trio.run(main)
    assert len({j.id for j in jobs}) == 50
    engine.run_until_idle(timeout=30)
    assert sorted(seen) == list(range(50))
