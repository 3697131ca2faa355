"""One Procrastinate trial (peers' venv): its asyncio worker in this process, concurrency 4.

The worker runs as ``procrastinate worker --concurrency 4`` would (``App``'s
worker, LISTEN/NOTIFY on, jobs kept after they finish like backrun keeps
them), on an event loop in a thread of this process, so jobs record into the
same in-process ledger as backrun's threads. Variants: ``sync`` is a plain
``def`` no-op task (Procrastinate runs it in a thread, as backrun runs its
handlers); ``async`` is an ``async def`` no-op, run on the worker's loop, its
fastest mode. Jobs are deferred synchronously from the main thread through a
second ``App`` on the same schema (Procrastinate's sync connector).

Like backrun's PostgreSQL row, it runs ``ANALYZE`` on its jobs table before the
workers start (a long-running deployment has statistics; a fresh table has
none). Each trial gets a fresh schema (``bench_proc_<hex>``, through the connection's
``search_path``; Procrastinate's SQL names its tables unqualified), made with
Procrastinate's own ``apply_schema`` and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import threading
from typing import Any

import procrastinate
import psycopg
from _common import Driver, MemoryLedger, main_for, warm_up

VARIANTS = ("sync", "async")
POSTGRES_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


class ProcrastinateDriver(Driver):
    def __init__(self, variant: str) -> None:
        self.ledger = MemoryLedger()
        self.schema = f"bench_proc_{secrets.token_hex(4)}"
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        conninfo = f"{POSTGRES_DSN}?options=-csearch_path%3D{self.schema}"
        self._conninfo = conninfo
        record = self.ledger.record
        # The producer's app: deferring from the main thread, synchronously.
        self.producer = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=conninfo)
        )
        # The worker's app: opened on the worker thread's event loop.
        self.worker_app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=conninfo, min_size=1, max_size=8)
        )
        for app in (self.producer, self.worker_app):
            if variant == "async":

                @app.task(name="noop")
                async def noop_async(enqueued_at: float) -> None:
                    record(enqueued_at)

            else:

                @app.task(name="noop")
                def noop(enqueued_at: float) -> None:
                    record(enqueued_at)

        self.producer.open()
        self.producer.schema_manager.apply_schema()
        self._task = self.producer.tasks["noop"]
        self._thread: threading.Thread | None = None
        self._worker: Any = None
        self._ready = threading.Event()

    def enqueue(self, enqueued_at: float) -> None:
        self._task.defer(enqueued_at=enqueued_at)

    def start_workers(self) -> None:
        # Statistics of the freshly filled table, as autovacuum would make in time
        # (backrun's row does the same): without them Procrastinate's fetch is
        # planned badly and its drain is 3-4x slower.
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            conn.execute("ANALYZE procrastinate_jobs")
        self._ready.clear()

        async def run() -> None:
            async with self.worker_app.open_async():
                self._worker = self.worker_app._worker(concurrency=4, install_signal_handlers=False)
                self._ready.set()
                await self._worker.run()

        self._thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
        self._thread.start()
        self._ready.wait(30)

    def stop_workers(self) -> None:
        if self._thread is not None:
            self._worker.stop()
            self._thread.join(30)
            self._thread = None

    can_restart_empty = True

    def restart_empty(self) -> None:
        self.stop_workers()
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            conn.execute("TRUNCATE procrastinate_jobs CASCADE")
        self.start_workers()
        warm_up(self)

    def close(self) -> None:
        self.stop_workers()
        self.producer.close()
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def build(args: argparse.Namespace) -> Driver:
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    return ProcrastinateDriver(args.variant)


if __name__ == "__main__":
    main_for(build, VARIANTS)
