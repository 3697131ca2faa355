"""Worker and enqueuer processes for the limits and unique-jobs tests, run as a script.

Usage:
  limits_app.py work STORE LEDGER [--threads N] [--recovery S]
  limits_app.py enqueue STORE KEY AT
  (STORE is ``json:<directory>`` or ``pg:<schema>``, the server from
  BACKRUN_TEST_POSTGRES_DSN.)

``work`` runs a worker until SIGTERM. Each handler appends
``start|end <job id> <handler> <concurrency key> <time ns> <pid>`` lines to
LEDGER (one O_APPEND write each), so a test can measure the concurrency of
every handler across processes; a job held back by a limit adds
``wait <job id> <handler> <limit> <time ns> <pid>``. ``enqueue`` starts 8 threads that wait for the
wall-clock time AT (ns), each enqueue ``limits.free`` with ``unique_key=KEY``,
and prints the ids they got back, one per line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pydantic import BaseModel

import backrun
from backrun.storage.base import Storage


class Item(BaseModel):
    n: int = 0
    tenant: str = "-"
    release: str = ""


def open_store(spec: str, *, threads: int = 2) -> Storage:
    kind, _, where = spec.partition(":")
    if kind == "json":
        return backrun.JsonFileStorage(where, fsync=False)
    from backrun.storage.postgres import PostgresStorage
    from tests.storage.postgres_support import tagged_dsn

    return PostgresStorage(
        tagged_dsn(where + "_w"),
        schema=where,
        pool_size=threads + 2,
        register_ttl=timedelta(seconds=60),
    )


def register(engine: backrun.Engine, ledger: str | None = None) -> None:
    """The test handlers (the enqueuing side registers them without a ledger)."""
    fd = -1 if ledger is None else os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    pid = os.getpid()

    def note(what: str, ctx: backrun.JobContext, key: str) -> None:
        line = f"{what} {ctx.job.id} {ctx.job.handler} {key} {time.time_ns()} {pid}\n"
        os.write(fd, line.encode())

    def timed(seconds: float) -> Callable[[Item, backrun.JobContext], None]:
        def run(payload: Item, ctx: backrun.JobContext) -> None:
            note("start", ctx, payload.tenant)
            time.sleep(seconds)
            note("end", ctx, payload.tenant)

        return run

    engine.add_handler(timed(0.1), name="limits.slow", max_concurrency=2)
    engine.add_handler(timed(0.1), name="limits.free")
    engine.add_handler(
        timed(0.1),
        name="limits.tenant",
        max_concurrency=1,
        concurrency_key=lambda p: p.tenant,
    )
    engine.add_handler(
        timed(0.0),
        name="limits.rate",
        rate_limit=backrun.RateLimit(10, per=timedelta(seconds=1)),
    )

    def hold(payload: Item, ctx: backrun.JobContext) -> None:
        note("start", ctx, payload.tenant)
        deadline = time.monotonic() + 120  # the test releases it far sooner, or kills us
        while not Path(payload.release).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        note("end", ctx, payload.tenant)

    engine.add_handler(hold, name="limits.hold", max_concurrency=1)


class LedgerWaits(backrun.Middleware):
    """Writes ``wait <job id> <handler> <limit> <time ns> <pid>`` when a limit holds a job."""

    def __init__(self, ledger: str) -> None:
        self.fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def job_waited(self, job_id: str, handler: str, limit: str) -> None:
        line = f"wait {job_id} {handler} {limit} {time.time_ns()} {os.getpid()}\n"
        os.write(self.fd, line.encode())


def work(args: argparse.Namespace) -> None:
    store = open_store(args.store, threads=args.threads)
    engine = backrun.Engine(
        store,
        threads=args.threads,
        lease=timedelta(seconds=60),
        recovery_interval=args.recovery,
        middleware=[LedgerWaits(args.ledger)],
        shutdown_timeout=5.0,
    )
    register(engine, args.ledger)
    print("ready", flush=True)
    engine.run_forever()
    engine.close()


def enqueue(args: argparse.Namespace) -> None:
    store = open_store(args.store, threads=8)
    engine = backrun.Engine(store, middleware=[])
    register(engine)
    got: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        while time.time_ns() < args.at:
            time.sleep(0.0005)
        job = engine.enqueue("limits.free", Item(), unique_key=args.key)
        with lock:
            got.append(job.id)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("\n".join(got), flush=True)
    engine.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("work")
    w.add_argument("store")
    w.add_argument("ledger")
    w.add_argument("--threads", type=int, default=4)
    w.add_argument("--recovery", type=float, default=0.5)
    e = sub.add_parser("enqueue")
    e.add_argument("store")
    e.add_argument("key")
    e.add_argument("at", type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.command == "work":
        work(args)
    else:
        enqueue(args)


if __name__ == "__main__":
    main()
