"""The JSON store benchmark: enqueue, drain, pickup, clutter; the disk and Huey as yardsticks.

Measured in one run, on the same file system:

* the disk's own limit: a durable small-file write (tmp write + fsync +
  ``os.replace`` + directory fsync), from 1 and from 4 threads;
* enqueue rate with ``fsync=True`` and ``fsync=False``: one producer, 4
  producer threads, and ``add_many`` (batches of 1,000);
* drain of a pre-filled store by an Engine (4 threads, no middleware):
  claim + run a no-op + record the completion;
* end to end: one producer enqueueing while a worker drains;
* pickup latency, enqueue to handler start: in-process, and from a producer
  process to a worker process;
* claim throughput with 100,000 finished and 50,000 far-future jobs in the
  store, against an empty store;
* Huey's ``SqliteHuey`` and ``FileHuey`` (thread consumer, 4 workers, the same
  no-op jobs), installed only in ``benchmarks/.venv-peers``, which this
  script creates (``--skip-huey`` to leave them out).

Usage: python benchmarks/jsonstore.py [--jobs 10000] [--dir DIR] [--skip-huey] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backrun
from backrun.jobs import Job, JobState, new_job_id
from backrun.serialization import dump_job
from backrun.storage.jsonfile import JsonFileStorage

HERE = Path(__file__).resolve().parent
PEERS = HERE / ".venv-peers"


class Stamp(BaseModel):
    t: float = 0.0


def make_jobs(count: int, *, run_at: datetime | None = None) -> list[Job]:
    now = datetime.now(UTC)
    when = run_at or now
    return [
        Job(
            id=new_job_id(),
            handler="noop",
            payload={"t": 0.0},
            run_at=when,
            created_at=now,
            state=JobState.QUEUED if when <= now else JobState.SCHEDULED,
        )
        for _ in range(count)
    ]


def in_threads(count: int, work: Callable[[int], None]) -> float:
    """Run ``work(i)`` in ``count`` threads at once; return the elapsed seconds."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


# -- the disk ------------------------------------------------------------------


def disk_limit(base: Path, threads: int, writes: int) -> float:
    """Durable small-file writes per second, the way the store writes a new job."""
    root = Path(tempfile.mkdtemp(dir=base))
    (root / "tmp").mkdir()
    (root / "dst").mkdir()
    data = dump_job(make_jobs(1)[0])
    per = writes // threads

    def work(i: int) -> None:
        dir_fd = os.open(root / "dst", os.O_RDONLY | os.O_DIRECTORY)
        for n in range(per):
            tmp = root / "tmp" / f"{i}-{n}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            os.replace(tmp, root / "dst" / f"{i}-{n}")
            os.fsync(dir_fd)
        os.close(dir_fd)

    elapsed = in_threads(threads, work)
    shutil.rmtree(root)
    return per * threads / elapsed


# -- enqueue -------------------------------------------------------------------


def enqueue_rates(base: Path, jobs: int, fsync: bool) -> dict[str, float]:
    rates: dict[str, float] = {}
    for mode in ("1 producer", "4 producers", "add_many"):
        root = Path(tempfile.mkdtemp(dir=base))
        store = JsonFileStorage(root / "s", fsync=fsync)
        batch = make_jobs(jobs)
        store.add(make_jobs(1)[0])  # the queue's directories exist, as in steady state
        if mode == "1 producer":
            started = time.perf_counter()
            for job in batch:
                store.add(job)
            elapsed = time.perf_counter() - started
        elif mode == "4 producers":
            per = jobs // 4

            def produce(
                i: int, store: JsonFileStorage = store, batch: list[Job] = batch, per: int = per
            ) -> None:
                for job in batch[i * per : (i + 1) * per]:
                    store.add(job)

            elapsed = in_threads(4, produce)
        else:
            started = time.perf_counter()
            for i in range(0, jobs, 1000):
                store.add_many(batch[i : i + 1000])
            elapsed = time.perf_counter() - started
        rates[mode] = jobs / elapsed
        store.close()
        shutil.rmtree(root)
    return rates


# -- drain and end to end --------------------------------------------------------


def make_engine(store: JsonFileStorage) -> backrun.Engine:
    engine = backrun.Engine(store, threads=4, middleware=[])

    @engine.handler(name="noop")
    def noop(payload: Stamp) -> None:
        return None

    return engine


def drain_rate(base: Path, jobs: int, fsync: bool) -> float:
    root = Path(tempfile.mkdtemp(dir=base))
    store = JsonFileStorage(root / "s", fsync=fsync)
    for i in range(0, jobs, 1000):
        store.add_many(make_jobs(min(1000, jobs - i)))
    engine = make_engine(store)
    started = time.perf_counter()
    ran = engine.run_until_idle(timeout=600)
    elapsed = time.perf_counter() - started
    assert ran == jobs, (ran, jobs)
    engine.close()
    shutil.rmtree(root)
    return jobs / elapsed


def end_to_end_rate(base: Path, jobs: int, fsync: bool) -> float:
    root = Path(tempfile.mkdtemp(dir=base))
    store = JsonFileStorage(root / "s", fsync=fsync)
    engine = make_engine(store)
    done = threading.Semaphore(0)

    @engine.handler(name="count")
    def count(payload: Stamp) -> None:
        done.release()

    with engine.running():
        started = time.perf_counter()
        for _ in range(jobs):
            engine.enqueue(count, {"t": 0.0})
        for _ in range(jobs):
            done.acquire()
        elapsed = time.perf_counter() - started
    engine.close()
    shutil.rmtree(root)
    return jobs / elapsed


# -- pickup latency --------------------------------------------------------------


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def pickup_in_process(base: Path, samples: int) -> dict[str, float]:
    """Enqueue (returned) to handler start, one job at a time, worker in this process."""
    root = Path(tempfile.mkdtemp(dir=base))
    store = JsonFileStorage(root / "s", fsync=True)
    engine = backrun.Engine(store, threads=4, middleware=[])
    started: dict[str, float] = {}
    event = threading.Event()

    @engine.handler(name="stamp")
    def stamp(payload: Stamp, ctx: backrun.JobContext) -> None:
        started[ctx.job.id] = time.perf_counter()
        event.set()

    latencies: list[float] = []
    with engine.running():
        for _ in range(samples):
            event.clear()
            job = engine.enqueue(stamp, {"t": 0.0})
            returned = time.perf_counter()
            event.wait(5)
            latencies.append(max(0.0, started[job.id] - returned))
    engine.close()
    shutil.rmtree(root)
    return percentiles(latencies)


_WORKER = """
import os, sys, time
sys.path.insert(0, sys.argv[3])
import backrun
from pydantic import BaseModel
from backrun.storage.jsonfile import JsonFileStorage

class Stamp(BaseModel):
    t: float = 0.0

engine = backrun.Engine(JsonFileStorage(sys.argv[1], fsync=True), middleware=[])
out = sys.argv[2]

@engine.handler(name="stamp")
def stamp(payload: Stamp, ctx: backrun.JobContext) -> None:
    line = f"{ctx.job.id} {time.time():.6f}\\n".encode()
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, line)
    os.close(fd)

engine.run_forever()
"""


def pickup_cross_process(base: Path, samples: int) -> dict[str, float]:
    """Enqueue (returned) in this process to handler start in a worker process."""
    root = Path(tempfile.mkdtemp(dir=base))
    store = JsonFileStorage(root / "s", fsync=True)
    out = root / "starts"
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(root / "s"), str(out), str(HERE.parent)]
    )
    returned: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 30
        while not os.listdir(root / "s" / "workers") and time.monotonic() < deadline:
            time.sleep(0.05)
        for n in range(samples):
            now = datetime.now(UTC)
            job = Job(id=new_job_id(), handler="stamp", payload={}, run_at=now, created_at=now)
            store.add(job)
            returned[job.id] = time.time()
            while _lines(out) <= n and time.monotonic() < deadline + 60:
                time.sleep(0.0005)
            time.sleep(0.003 + (n % 7) * 0.004)  # enqueue at varied moments
        starts = dict(line.split() for line in out.read_text().splitlines())
    finally:
        worker.terminate()
        worker.wait(30)
        store.close()
        shutil.rmtree(root)
    return percentiles([max(0.0, float(starts[i]) - t) for i, t in returned.items()])


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


# -- clutter -----------------------------------------------------------------------


def claim_rate(store: JsonFileStorage, count: int) -> float:
    now = datetime.now(UTC)
    started = time.perf_counter()
    claimed = 0
    while claimed < count:
        jobs = store.claim(
            queues=None, limit=1, now=now, worker_id="bench", lease=timedelta(minutes=5)
        )
        for job in jobs:
            store.update(job.replace(state=JobState.SUCCEEDED, finished_at=now))
        claimed += len(jobs)
        if not jobs:
            break
    return claimed / (time.perf_counter() - started)


def clutter(base: Path, finished: int, far: int, due: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(dir=base))
    empty = JsonFileStorage(root / "empty", fsync=False)
    full = JsonFileStorage(root / "full", fsync=False)
    for store in (empty, full):
        store.add_many(make_jobs(due))
    future = datetime.now(UTC) + timedelta(days=30)
    for i in range(0, far, 5000):
        full.add_many(make_jobs(min(5000, far - i), run_at=future + timedelta(hours=i % 97)))
    done_dir = Path(full.path) / "q" / "default" / "succeeded"
    now = datetime.now(UTC)
    for job in make_jobs(finished):
        record = job.replace(state=JobState.SUCCEEDED, finished_at=now, attempts=1)
        (done_dir / f"{job.id}.json").write_bytes(dump_job(record))
    # Interleaved rounds, median of each: the machine's drift hits both stores alike.
    rates: dict[str, list[float]] = {"empty": [], "cluttered": []}
    per_round = due // 5
    for _ in range(5):
        rates["empty"].append(claim_rate(empty, per_round))
        rates["cluttered"].append(claim_rate(full, per_round))
    result = {name: statistics.median(values) for name, values in rates.items()}
    empty.close()
    full.close()
    shutil.rmtree(root)
    return result


# -- Huey -------------------------------------------------------------------------------

_HUEY = r"""
import json, sys, tempfile, threading, time, os
from huey import SqliteHuey, FileHuey

jobs = int(sys.argv[1]); base = sys.argv[2]
out = {}
for name in ("SqliteHuey", "SqliteHuey(fsync=True)", "FileHuey"):
    root = tempfile.mkdtemp(dir=base)
    if name == "FileHuey":
        # use_thread_lock: its default file lock stalls a thread consumer in one process.
        huey = FileHuey("bench", path=root, results=False, use_thread_lock=True)
    else:
        huey = SqliteHuey("bench", filename=os.path.join(root, "huey.db"), results=False,
                          fsync="fsync" in name)
    done = [0]
    lock = threading.Lock()
    @huey.task()
    def noop():
        with lock:
            done[0] += 1
    t0 = time.perf_counter()
    for _ in range(jobs):
        noop()
    enqueue = jobs / (time.perf_counter() - t0)
    consumer = huey.create_consumer(workers=4, worker_type="thread", periodic=False,
                                    initial_delay=0.001, max_delay=0.01, backoff=1.0)
    t0 = time.perf_counter()
    consumer.start()
    while done[0] < jobs and time.perf_counter() - t0 < 300:
        time.sleep(0.002)
    drain = done[0] / (time.perf_counter() - t0)
    consumer.stop()
    out[name] = {"enqueue": enqueue, "drain": drain, "ran": done[0]}
print(json.dumps(out))
"""


def huey_rates(base: Path, jobs: int) -> dict[str, Any]:
    python = PEERS / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "huey>=2.5,<3"], check=True)
    result = subprocess.run(
        [str(python), "-c", _HUEY, str(jobs), str(base)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


# -- report ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--dir", default=None, help="where to put the stores (default: ./)")
    parser.add_argument("--skip-huey", action="store_true")
    parser.add_argument("--clutter", type=int, default=100_000, help="finished jobs (far = half)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="backrun-bench-", dir=args.dir or "."))
    jobs = args.jobs
    results: dict[str, Any] = {"jobs": jobs, "cpus": os.cpu_count()}
    say = print
    try:
        say(f"backrun JSON store benchmark: {jobs} no-op jobs, {os.cpu_count()} CPUs", flush=True)
        disk = [(disk_limit(base, 1, min(jobs, 3000)), disk_limit(base, 4, min(jobs, 3000)))]
        for fsync in (True, False):
            label = f"fsync={fsync}"
            results[label] = {
                "enqueue": enqueue_rates(base, jobs, fsync),
                "drain": drain_rate(base, jobs, fsync),
                "end_to_end": end_to_end_rate(base, jobs, fsync),
            }
            say(f"{label}: {json.dumps(results[label])}", flush=True)
        results["pickup"] = {
            "in-process": pickup_in_process(base, 300),
            "cross-process": pickup_cross_process(base, 200),
        }
        results["clutter"] = clutter(base, args.clutter, args.clutter // 2, 5000)
        if not args.skip_huey:
            results["huey"] = huey_rates(base, jobs)
        disk.append((disk_limit(base, 1, min(jobs, 3000)), disk_limit(base, 4, min(jobs, 3000))))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    disk1 = statistics.mean(d[0] for d in disk)
    disk4 = statistics.mean(d[1] for d in disk)
    results["disk"] = {"1 thread": disk1, "4 threads": disk4, "runs": disk}
    say(
        f"\ndisk limit (tmp write + fsync + replace + dir fsync), mean of start and end: "
        f"{disk1:,.0f}/s from 1 thread, {disk4:,.0f}/s from 4 threads"
    )
    for label in ("fsync=True", "fsync=False"):
        figures = results[label]
        say(f"\n{label}")
        for mode, rate in figures["enqueue"].items():
            ref = disk1 if mode == "1 producer" else disk4
            say(f"  enqueue, {mode:<12} {rate:>9,.0f}/s  ({rate / ref:5.2f} x disk limit)")
        say(
            f"  drain (4 threads)      {figures['drain']:>9,.0f}/s  "
            f"({figures['drain'] / disk4:5.2f} x disk limit)"
        )
        say(f"  end to end             {figures['end_to_end']:>9,.0f}/s")
    for where, p in results["pickup"].items():
        say(f"\npickup latency {where}: p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms")
    cl = results["clutter"]
    say(
        f"\nclaim+complete, empty store: {cl['empty']:,.0f}/s; with {args.clutter:,} finished + "
        f"{args.clutter // 2:,} far-future: {cl['cluttered']:,.0f}/s "
        f"({cl['cluttered'] / cl['empty']:.0%})"
    )
    if args.skip_huey:
        say("\nHuey: skipped (--skip-huey)")
    else:
        ours = results["fsync=True"]["drain"]
        for name, figures in results["huey"].items():
            say(
                f"{name}: enqueue {figures['enqueue']:,.0f}/s, drain {figures['drain']:,.0f}/s"
                f" (backrun fsync=True drain = {ours / figures['drain']:.1f}x)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
