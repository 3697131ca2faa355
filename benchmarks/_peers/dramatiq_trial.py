"""One Dramatiq trial (peers' venv): StubBroker in this process, or Redis with a worker process.

Both use Dramatiq's default middleware and ``Worker(broker, worker_threads=4)``.
With Redis the worker is a separate process (this script with ``worker``), as
``dramatiq --processes 1 --threads 4`` would run it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import dramatiq
from _common import (
    Driver,
    FileLedger,
    FileRecorder,
    MemoryLedger,
    WorkerProcesses,
    main_for,
    wait_for_signal,
    warm_up,
)
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

VARIANTS = ("stub", "redis")
QUEUE = "bench"


def declare(broker: Any, record: Any) -> Any:
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    def noop(enqueued_at: float) -> None:
        record(enqueued_at)

    return noop


class DramatiqDriver(Driver):
    def __init__(self, variant: str, workdir: str, redis_url: str) -> None:
        self.variant = variant
        self._worker: Any = None
        if variant == "stub":
            self.ledger = MemoryLedger()
            self.broker: Any = StubBroker()
        else:
            self.ledger = FileLedger(os.path.join(workdir, f"ledger-dramatiq-{os.getpid()}"))
            self.broker = RedisBroker(url=redis_url)
            self.broker.client.flushdb()  # compare.py checked it was empty: leftovers only
            self._processes = WorkerProcesses(self.ledger)
            self._redis_url = redis_url
        self.actor = declare(self.broker, getattr(self.ledger, "record", None))

    def enqueue(self, enqueued_at: float) -> None:
        self.actor.send(enqueued_at)

    def start_workers(self) -> None:
        if self.variant == "stub":
            self._worker = dramatiq.Worker(self.broker, worker_threads=4)
            self._worker.start()
        else:
            self._processes.start([__file__, "worker", self._redis_url])

    def worker_rss_kb(self) -> int:
        return super().worker_rss_kb() if self.variant == "stub" else self._processes.peak_rss_kb()

    def stop_workers(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        if self.variant == "redis":
            self._processes.stop()

    @property
    def can_restart_empty(self) -> bool:  # type: ignore[override]
        return self.variant == "redis"

    def check(self) -> None:
        if self.variant == "redis":
            self._processes.check()

    def restart_empty(self) -> None:
        self._processes.stop()
        self.broker.flush_all()
        self.broker.client.flushdb()
        self.start_workers()
        warm_up(self)

    def close(self) -> None:
        self.stop_workers()
        if self.variant == "redis":
            self.broker.flush_all()
            os.unlink(self.ledger.path)
        self.broker.close()


def run_worker(redis_url: str) -> None:
    broker = RedisBroker(url=redis_url)
    declare(broker, FileRecorder().record)
    worker = dramatiq.Worker(broker, worker_threads=4)
    worker.start()
    wait_for_signal()
    worker.stop()
    broker.close()


def build(args: argparse.Namespace) -> Driver:
    return DramatiqDriver(args.variant, args.workdir, args.redis_url)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    if sys.argv[1] == "worker":
        run_worker(sys.argv[2])
    else:
        main_for(build, VARIANTS)
