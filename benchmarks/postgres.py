"""Benchmark backrun's PostgreSQL store, with Procrastinate on the same server as reference.

Usage:
    .venv/bin/python benchmarks/postgres.py [--dsn DSN] [--jobs 10000] [--threads 4]
        [--finished 1000000] [--no-procrastinate] [--scrape-only]

Measures, for no-op jobs: enqueue rate (one by one, and batched), drain rate
with one and with three worker processes of ``--threads`` threads each, pickup
latency (enqueue to start, idle workers woken by NOTIFY), and the time of one
claim with 10k and with ``--finished`` finished rows in the table, and the cost
of one metrics scrape (``counts()`` + ``oldest_due()``, the queue collector's
reads, uncached) with ``--finished`` finished rows. ``--scrape-only`` measures
just the scrape.

Procrastinate is installed only into ``benchmarks/.venv-procrastinate`` (created
on first use) and runs the same drain with async no-op tasks and the same
concurrency. Every run uses throwaway schemas, dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from pydantic import BaseModel  # noqa: E402

import backrun  # noqa: E402
from backrun.jobs import Job, JobState, new_job_id  # noqa: E402
from backrun.storage.postgres import PostgresStorage  # noqa: E402

DEFAULT_DSN = os.environ.get(
    "BACKRUN_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
VENV = ROOT / "benchmarks" / ".venv-procrastinate"


class Item(BaseModel):
    n: int = 0


def make_engine(dsn: str, schema: str, threads: int) -> backrun.Engine:
    store = PostgresStorage(dsn, schema=schema, pool_size=threads + 2)
    engine = backrun.Engine(store, threads=threads, middleware=[])

    @engine.handler(name="bench.noop")
    def noop(payload: Item) -> None:
        return None

    return engine


# -- helpers -------------------------------------------------------------------


def sql(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


@contextmanager
def schema(dsn: str, prefix: str) -> Iterator[str]:
    name = f"{prefix}_{secrets.token_hex(3)}"
    try:
        yield name
    finally:
        sql(dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_for(predicate: Callable[[], bool], timeout: float, poll: float = 0.01) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("benchmark step did not finish in time")
        time.sleep(poll)
    return time.perf_counter() - start


class Children:
    """Worker processes that get ready, then start together on "go"."""

    def __init__(self, commands: list[list[str]]) -> None:
        self.procs = [
            subprocess.Popen(c, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for c in commands
        ]
        for proc in self.procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a worker process failed to start")

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def stop(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in self.procs:
            proc.wait(timeout=60)


def backrun_workers(dsn: str, schema_name: str, procs: int, threads: int) -> Children:
    me = [sys.executable, str(Path(__file__).resolve()), "--dsn", dsn]
    return Children([[*me, "--child", schema_name, str(threads)] for _ in range(procs)])


def child(dsn: str, schema_name: str, threads: int) -> None:
    engine = make_engine(dsn, schema_name, threads)
    print("ready", flush=True)
    sys.stdin.readline()
    with engine.running():
        sys.stdin.read()  # until the parent closes our stdin
    engine.close()


def no_op_jobs(count: int) -> list[Job]:
    now = datetime.now(UTC)
    return [
        Job(id=new_job_id(), handler="bench.noop", payload={"n": i}, run_at=now, created_at=now)
        for i in range(count)
    ]


# -- backrun scenarios ---------------------------------------------------------


def enqueue_rates(dsn: str, jobs: int) -> tuple[dict[str, float], str]:
    """Enqueue one by one into a schema that is kept for the first drain."""
    results: dict[str, float] = {}
    kept = f"bench_drain_{secrets.token_hex(3)}"
    engine = make_engine(dsn, kept, 1)
    assert isinstance(engine.storage, PostgresStorage)
    engine.storage.migrate()
    start = time.perf_counter()
    for i in range(jobs):
        engine.enqueue("bench.noop", {"n": i})
    results["enqueue_one_by_one_per_s"] = jobs / (time.perf_counter() - start)
    engine.close()
    with schema(dsn, "bench_many") as name:
        engine = make_engine(dsn, name, 1)
        assert isinstance(engine.storage, PostgresStorage)
        engine.storage.migrate()
        start = time.perf_counter()
        for offset in range(0, jobs, 1000):
            engine.enqueue_many("bench.noop", [{"n": i} for i in range(offset, offset + 1000)])
        results["enqueue_many_per_s"] = jobs / (time.perf_counter() - start)
        engine.close()
    return results, kept


def drain_rate(dsn: str, name: str, jobs: int, procs: int, threads: int) -> float:
    store = PostgresStorage(dsn, schema=name, pool_size=1)
    store.migrate()
    if not store.counts():
        store.add_many(no_op_jobs(jobs))
    workers = backrun_workers(dsn, name, procs, threads)
    done = f'SELECT count(*) FROM "{name}".jobs WHERE state = %s'
    workers.go()
    seconds = wait_for(lambda: sql(dsn, done, ("succeeded",))[0][0] == jobs, timeout=600)
    workers.stop()
    store.close()
    return jobs / seconds


def pickup_latency(dsn: str, procs: int, threads: int, samples: int = 300) -> dict[str, float]:
    with schema(dsn, "bench_pickup") as name:
        engine = make_engine(dsn, name, 1)
        assert isinstance(engine.storage, PostgresStorage)
        engine.storage.migrate()
        workers = backrun_workers(dsn, name, procs, threads)
        workers.go()
        time.sleep(0.5)  # let every worker reach its idle wait
        latencies: list[float] = []
        for i in range(samples):
            job = engine.enqueue("bench.noop", {"n": i})
            started = wait_started(engine.storage, job.id)
            assert job.created_at is not None
            latencies.append((started - job.created_at).total_seconds() * 1000)
        workers.stop()
        engine.close()
    return {"pickup_p50_ms": pct(latencies, 0.5), "pickup_p99_ms": pct(latencies, 0.99)}


def wait_started(store: PostgresStorage, job_id: str) -> datetime:
    while True:
        job = store.get(job_id)
        if job is not None and job.state is JobState.SUCCEEDED and job.started_at is not None:
            return job.started_at
        time.sleep(0.002)


def claim_scaling(dsn: str, finished_sizes: list[int], claims: int = 1000) -> dict[str, float]:
    results: dict[str, float] = {}
    with schema(dsn, "bench_claim") as name:
        store = PostgresStorage(dsn, schema=name, pool_size=1)
        store.migrate()
        inserted = 0
        for size in finished_sizes:
            sql(
                dsn,
                f'INSERT INTO "{name}".jobs (id, handler, queue, priority, state, attempts, '
                "max_attempts, run_at, finished_at, payload) SELECT lpad(to_hex(i), 32, '0'), "
                "'bench.noop', 'default', 0, 'succeeded', 1, 4, now(), now(), '{}' "
                "FROM generate_series(%s::bigint, %s::bigint) AS i",
                (inserted + 1, size),
            )
            inserted = size
            sql(dsn, f'VACUUM ANALYZE "{name}".jobs')
            store.add_many(no_op_jobs(claims * 2))
            now = datetime.now(UTC) + timedelta(seconds=1)
            times: list[float] = []
            for _ in range(claims):
                start = time.perf_counter()
                store.claim(
                    queues=None, limit=1, now=now, worker_id="bench", lease=timedelta(minutes=5)
                )
                times.append((time.perf_counter() - start) * 1000)
            label = f"{size // 1000}k" if size < 1_000_000 else f"{size / 1e6:g}M"
            results[f"claim_ms_p50_{label}_finished"] = statistics.median(times)
            results[f"claim_ms_p99_{label}_finished"] = pct(times, 0.99)
            start = time.perf_counter()
            store.counts()
            results[f"counts_ms_{label}_finished"] = (time.perf_counter() - start) * 1000
            sql(dsn, f"UPDATE \"{name}\".jobs SET state = 'succeeded' WHERE state <> 'succeeded'")
        store.close()
    return results


def scrape_cost(dsn: str, finished: int, scrapes: int = 50) -> dict[str, float]:
    """One uncached metrics scrape with ``finished`` finished rows, 1k waiting, 100 running."""
    from backrun.observability.queue_collector import QueueCollector

    label = f"{finished // 1000}k" if finished < 1_000_000 else f"{finished / 1e6:g}M"
    with schema(dsn, "bench_scrape") as name:
        store = PostgresStorage(dsn, schema=name, pool_size=1)
        store.migrate()
        start = time.perf_counter()
        sql(
            dsn,
            f'INSERT INTO "{name}".jobs (id, handler, queue, priority, state, attempts, '
            "max_attempts, run_at, finished_at, payload) SELECT lpad(to_hex(i), 32, '0'), "
            "'bench.noop', 'default', 0, 'succeeded', 1, 4, now(), now(), '{}' "
            "FROM generate_series(1::bigint, %s::bigint) AS i",
            (finished,),
        )
        insert_s = time.perf_counter() - start
        sql(dsn, f'VACUUM ANALYZE "{name}".jobs')
        store.add_many(no_op_jobs(1000))
        store.claim(
            queues=None,
            limit=100,
            now=datetime.now(UTC),
            worker_id="bench",
            lease=timedelta(minutes=5),
        )
        collector = QueueCollector(cache_seconds=0)
        collector.add(store)
        times: list[float] = []
        for _ in range(scrapes):
            start = time.perf_counter()
            collector.collect()
            times.append((time.perf_counter() - start) * 1000)
        store.close()
    return {
        f"scrape_ms_p50_{label}_finished": statistics.median(times),
        f"scrape_ms_max_{label}_finished": max(times),
        f"insert_s_{label}_finished": insert_s,
    }


# -- Procrastinate -------------------------------------------------------------

PROCRASTINATE_PROGRAM = """
import asyncio, sys, time
from procrastinate import App, PsycopgConnector

dsn, schema, mode = sys.argv[1], sys.argv[2], sys.argv[3]
app = App(connector=PsycopgConnector(conninfo=dsn, kwargs={"options": f"-c search_path={schema}"}))

@app.task(name="noop")
async def noop(n):
    return None

if mode == "setup":
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    jobs = int(sys.argv[4])
    with app.open():
        app.schema_manager.apply_schema()
        start = time.perf_counter()
        for i in range(min(jobs, 2000)):
            noop.defer(n=i)
        one_by_one = min(jobs, 2000) / (time.perf_counter() - start)
        for offset in range(2000, jobs, 1000):
            noop.batch_defer(*({"n": i} for i in range(offset, min(offset + 1000, jobs))))
    print(one_by_one)
else:
    concurrency = int(sys.argv[4])
    print("ready", flush=True)
    sys.stdin.readline()
    app.run_worker(concurrency=concurrency, wait=False, install_signal_handlers=False)
    sys.stdin.read()
"""


def procrastinate_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "procrastinate[psycopg]>=3,<4"],
            check=True,
        )
    return python


def procrastinate_drain(dsn: str, jobs: int, procs: int, threads: int) -> dict[str, float]:
    python = procrastinate_python()
    with tempfile.TemporaryDirectory() as tmp, schema(dsn, "bench_procrastinate") as name:
        program = Path(tmp) / "procrastinate_bench.py"
        program.write_text(PROCRASTINATE_PROGRAM)
        setup = subprocess.run(
            [str(python), str(program), dsn, name, "setup", str(jobs)],
            check=True,
            capture_output=True,
            text=True,
        )
        workers = Children(
            [[str(python), str(program), dsn, name, "work", str(threads)] for _ in range(procs)]
        )
        done = f"SELECT count(*) FROM \"{name}\".procrastinate_jobs WHERE status = 'succeeded'"
        workers.go()
        seconds = wait_for(lambda: sql(dsn, done)[0][0] == jobs, timeout=600)
        workers.stop()
        version = subprocess.run(
            [str(python), "-c", "import procrastinate; print(procrastinate.__version__)"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    return {
        "procrastinate_version": version,  # type: ignore[dict-item]
        "procrastinate_defer_one_by_one_per_s": float(setup.stdout.strip()),
        f"procrastinate_drain_{procs}proc_per_s": jobs / seconds,
    }


# -- main ----------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--no-procrastinate", action="store_true")
    parser.add_argument("--scrape-only", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("SCHEMA", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.dsn, args.child[0], int(args.child[1]))
        return
    if args.scrape_only:
        print(json.dumps({k: round(v, 2) for k, v in scrape_cost(args.dsn, args.finished).items()}))
        return
    results: dict[str, Any] = {"jobs": args.jobs, "threads": args.threads}
    enqueue, kept = enqueue_rates(args.dsn, args.jobs)
    results.update(enqueue)
    try:
        results["drain_1proc_per_s"] = drain_rate(args.dsn, kept, args.jobs, 1, args.threads)
    finally:
        sql(args.dsn, f'DROP SCHEMA IF EXISTS "{kept}" CASCADE')
    with schema(args.dsn, "bench_drain3") as name:
        results["drain_3proc_per_s"] = drain_rate(args.dsn, name, args.jobs, 3, args.threads)
    for procs in (1, 3):
        for key, value in pickup_latency(args.dsn, procs, args.threads).items():
            results[f"{key}_{procs}proc"] = value
    results.update(claim_scaling(args.dsn, [10_000, args.finished]))
    results.update(scrape_cost(args.dsn, args.finished))
    if not args.no_procrastinate:
        for procs in (1, 3):
            results.update(procrastinate_drain(args.dsn, args.jobs, procs, args.threads))
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in results.items()}))


if __name__ == "__main__":
    main()
