"""How backrun's cost grows with the work: finished jobs in the store, and threads.

For each level of finished jobs already in the store (filled up to it with a
middleware-free engine), it measures:

* claim latency: ``storage.claim(limit=1)`` timed one call at a time over
  200 due jobs (median and p99, µs);
* drain rate of ``--jobs`` pre-filled no-op jobs with 1, 2, 4 and 8 threads
  (``threads``; default middleware on), jobs/s.

The jobs measured also finish, so the count grows within a level; each row
records the exact count it started from.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import time
from datetime import timedelta
from typing import Any

from _common import emit, percentile
from pydantic import BaseModel

import backrun
from backrun.jobs import JobState


class Stamp(BaseModel):
    t0: float = 0.0


def noop(payload: Stamp) -> None:
    return None


def make_engine(store: backrun.Storage, threads: int, *, middleware: bool) -> backrun.Engine:
    engine = backrun.Engine(store, threads=threads, middleware=None if middleware else [])
    engine.add_handler(noop, name="noop")
    return engine


def finished(store: backrun.Storage) -> int:
    return sum(n for (_, state), n in store.counts().items() if state is JobState.SUCCEEDED)


def claim_latency(store: backrun.Storage, engine: backrun.Engine, samples: int) -> list[float]:
    engine.enqueue_many("noop", [Stamp()] * samples)
    times: list[float] = []
    for _ in range(samples):
        now = engine.clock.now()
        started = time.perf_counter()
        jobs = store.claim(
            queues=None, limit=1, now=now, worker_id="bench-claims", lease=timedelta(minutes=5)
        )
        times.append((time.perf_counter() - started) * 1e6)
        (job,) = jobs
        store.update(job.replace(state=JobState.SUCCEEDED, finished_at=engine.clock.now()))
    return times


def level(store: backrun.Storage, jobs: int, threads: list[int]) -> dict[str, Any]:
    row: dict[str, Any] = {"finished_before": finished(store)}
    engine = make_engine(store, 1, middleware=False)
    claims = claim_latency(store, engine, 200)
    row["claim_p50_us"] = statistics.median(claims)
    row["claim_p99_us"] = percentile(claims, 99)
    for count in threads:
        measured = make_engine(store, count, middleware=True)
        measured.enqueue_many("noop", [Stamp()] * jobs)
        started = time.perf_counter()
        done = measured.run_until_idle(timeout=600)
        row[f"drain_{count}t"] = done / (time.perf_counter() - started)
    return row


def run(kind: str, workdir: str, levels: list[int], jobs: int, threads: list[int]) -> list[Any]:
    path = os.path.join(workdir, f"scaling-{secrets.token_hex(4)}")
    store: backrun.Storage = (
        backrun.MemoryStorage() if kind == "memory" else backrun.JsonFileStorage(path, fsync=False)
    )
    filler = make_engine(store, 8, middleware=False)
    rows = []
    try:
        for target in levels:
            missing = target - finished(store)
            for start in range(0, max(missing, 0), 1000):
                filler.enqueue_many("noop", [Stamp()] * min(1000, missing - start))
            filler.run_until_idle(timeout=1800)
            rows.append({"store": kind, "level": target, **level(store, jobs, threads)})
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", choices=("memory", "json"))
    parser.add_argument("--levels", default="1000,10000,100000")
    parser.add_argument("--threads", default="1,2,4,8")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    threads = [int(x) for x in args.threads.split(",")]
    emit({"rows": run(args.store, args.workdir, levels, args.jobs, threads)})


if __name__ == "__main__":
    main()
