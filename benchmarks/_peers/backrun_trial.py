"""One backrun trial (run with the project's interpreter): worker threads in this process.

Variants: ``memory``, ``json-fsync``, ``json-nofsync``, ``postgres``; always with
the default middleware stack (tracing + metrics). Usage: see ``_common.trial_arguments``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import secrets
import shutil
import tempfile
from typing import Any

from _common import Driver, MemoryLedger, burst, main_for
from pydantic import BaseModel

import backrun

VARIANTS = ("memory", "json-fsync", "json-nofsync", "postgres")
POSTGRES_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


class Stamp(BaseModel):
    t0: float = 0.0


def make_store(variant: str, workdir: str) -> tuple[backrun.Storage, Any]:
    """Return a fresh store and a callable that removes it."""
    if variant == "memory":
        return backrun.MemoryStorage(), lambda: None
    if variant.startswith("json"):
        path = os.path.join(workdir, f"backrun-{secrets.token_hex(4)}")
        store = backrun.JsonFileStorage(path, fsync=variant == "json-fsync")
        return store, lambda: shutil.rmtree(path, ignore_errors=True)
    import psycopg

    schema = f"bench_{secrets.token_hex(4)}"
    pg = backrun.PostgresStorage(POSTGRES_DSN, schema=schema)
    pg.migrate()

    def drop() -> None:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    return pg, drop


def analyze(table: str) -> None:
    """Refresh the planner's statistics of a freshly filled table, as autovacuum would in time.

    Every PostgreSQL row does this before its workers start, so each system's
    claim query is planned as in a long-running deployment.
    """
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f"ANALYZE {table}")


class BackrunDriver(Driver):
    def __init__(self, variant: str, workdir: str) -> None:
        self.ledger = MemoryLedger()
        self.variant = variant
        self.store, self._remove = make_store(variant, workdir)
        self.engine = backrun.Engine(self.store, threads=4)
        record = self.ledger.record

        def noop(payload: Stamp) -> None:
            record(payload.t0)

        self.engine.add_handler(noop, name="noop")
        self._running: contextlib.ExitStack | None = None

    def enqueue(self, enqueued_at: float) -> None:
        self.engine.enqueue("noop", Stamp(t0=enqueued_at))

    def start_workers(self) -> None:
        if self.variant == "postgres":
            analyze(f'"{self.store.schema}".jobs')  # type: ignore[attr-defined]
        self._running = contextlib.ExitStack()
        self._running.enter_context(self.engine.running())

    def stop_workers(self) -> None:
        if self._running is not None:
            self._running.close()
            self._running = None

    def close(self) -> None:
        self.stop_workers()
        self.engine.close()
        self._remove()


def build(args: argparse.Namespace) -> Driver:
    return BackrunDriver(args.variant, args.workdir)


def paired_durable(driver: Driver, args: argparse.Namespace) -> dict[str, Any]:
    """Durable enqueue from 4 threads against the 4-thread durable-write limit, paired.

    Other processes' disk traffic moves both figures a lot, so they alternate
    in 1-second bursts (3 each) on the same file system, and the ratio of the
    totals is reported beside them.
    """
    if args.variant != "json-fsync" or not args.enqueue_threads:
        return {}
    from limits import durable_write

    directory = tempfile.mkdtemp(prefix="paired-", dir=args.workdir)
    os.mkdir(os.path.join(directory, "tmp"))
    os.mkdir(os.path.join(directory, "ready"))
    names = itertools.count()
    totals = {"limit": [0, 0.0], "enqueue": [0, 0.0]}
    work = {
        "limit": lambda: durable_write(directory, str(next(names))),
        "enqueue": lambda: driver.enqueue(0.0),
    }
    try:
        for _ in range(3):
            for name, call in work.items():
                count, elapsed = burst(call, args.enqueue_threads, 1.0)
                totals[name][0] += count
                totals[name][1] += elapsed
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    limit = totals["limit"][0] / totals["limit"][1]
    enqueue = totals["enqueue"][0] / totals["enqueue"][1]
    return {"paired_limit_4t": limit, "paired_enqueue_4t": enqueue, "paired_ratio": enqueue / limit}


if __name__ == "__main__":
    main_for(build, VARIANTS, paired_durable)
