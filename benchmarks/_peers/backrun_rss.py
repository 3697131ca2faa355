"""Worker memory over many jobs: does a backrun worker's RSS grow with the jobs it has run?

``drain PATH --jobs N`` runs a worker (default middleware, ``threads=4``,
the store with ``fsync=True``) in a fresh process until N jobs ran, sampling
its own RSS. Growth = peak RSS at the end minus RSS once the first 5% ran
(imports, caches and thread stacks are warm by then). The jobs come either
from ``feed PATH --jobs N`` running beside it (another process keeping about
``--depth`` jobs waiting: a steady stream, the leak test) or from
``fill PATH --jobs N`` beforehand (all N waiting at once: memory that grows
with the depth of the queue shows here).

``backlog PATH --seconds S`` runs a worker for S seconds on a store (filled by
``fill`` or empty) and reports its peak RSS: the pair gives the memory a
worker pays for a backlog of waiting jobs.
"""

from __future__ import annotations

import argparse
import time

from _common import emit, peak_rss_kb, rss_kb
from pydantic import BaseModel

import backrun
from backrun.jobs import JobState

WAITING = (JobState.QUEUED, JobState.SCHEDULED)


class Stamp(BaseModel):
    t0: float = 0.0


def noop(payload: Stamp) -> None:
    return None


def fill(path: str, jobs: int) -> None:
    engine = backrun.Engine(backrun.JsonFileStorage(path, fsync=False), middleware=[])
    engine.add_handler(noop, name="noop")
    payload = Stamp()
    for start in range(0, jobs, 1000):
        engine.enqueue_many("noop", [payload] * min(1000, jobs - start))
    engine.close()


def feed(path: str, jobs: int, depth: int) -> None:
    """Keep about ``depth`` jobs waiting until ``jobs`` were written (a steady producer)."""
    store = backrun.JsonFileStorage(path, fsync=False)
    engine = backrun.Engine(store, middleware=[])
    engine.add_handler(noop, name="noop")
    payload = Stamp()
    written = 0
    while written < jobs:
        waiting = sum(n for (_, state), n in store.counts().items() if state in WAITING)
        if waiting < depth:
            batch = min(depth // 2, jobs - written)
            engine.enqueue_many("noop", [payload] * batch)
            written += batch
        else:
            time.sleep(0.05)
    engine.close()


def drain(path: str, jobs: int, timeout: float) -> dict[str, object]:
    engine = backrun.Engine(backrun.JsonFileStorage(path), threads=4)
    engine.add_handler(noop, name="noop")
    samples: list[tuple[int, float]] = []
    baseline: float | None = None
    started = time.perf_counter()
    with engine.running() as worker:
        deadline = time.monotonic() + timeout
        while worker.processed < jobs:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{worker.processed}/{jobs} jobs ran in {timeout} s")
            time.sleep(0.25)
            samples.append((worker.processed, rss_kb() / 1024))
            if baseline is None and worker.processed >= jobs // 20:
                baseline = samples[-1][1]
        elapsed = time.perf_counter() - started
        peak = peak_rss_kb() / 1024
    engine.close()
    assert baseline is not None
    step = max(1, len(samples) // 20)
    return {
        "jobs": jobs,
        "rate": jobs / elapsed,
        "baseline_mb": baseline,
        "peak_mb": peak,
        "growth_mb": peak - baseline,
        "samples": samples[::step],
    }


def backlog(path: str, seconds: float) -> dict[str, object]:
    """A worker's peak RSS after ``seconds`` on the store at ``path`` (full or empty)."""
    store = backrun.JsonFileStorage(path)
    waiting = sum(n for (_, state), n in store.counts().items() if state in WAITING)
    engine = backrun.Engine(store, threads=4)
    engine.add_handler(noop, name="noop")
    with engine.running() as worker:
        time.sleep(seconds)
        processed = worker.processed
        peak = peak_rss_kb() / 1024
    engine.close()
    return {"waiting": waiting, "processed": processed, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("fill", "feed", "drain", "backlog"))
    parser.add_argument("path")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--depth", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    if args.what == "fill":
        fill(args.path, args.jobs)
        emit({"filled": args.jobs})
    elif args.what == "feed":
        feed(args.path, args.jobs, args.depth)
    elif args.what == "backlog":
        emit(backlog(args.path, args.seconds))
    else:
        emit(drain(args.path, args.jobs, args.timeout))


if __name__ == "__main__":
    main()
