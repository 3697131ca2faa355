"""One RQ trial (peers' venv): Redis, four ``SimpleWorker`` processes.

RQ runs one job at a time per worker process, so four jobs at once means four
processes (``rq worker --worker-class rq.SimpleWorker`` four times); their peak
RSS is reported summed. ``SimpleWorker`` runs jobs in the worker process
itself instead of forking a child per job (the default ``Worker``), which is
RQ's fastest configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from _common import Driver, FileLedger, FileRecorder, WorkerProcesses, main_for, warm_up
from redis import Redis
from rq import Queue, SimpleWorker

VARIANTS = ("redis",)
QUEUE = "bench"
_recorder = FileRecorder()


def noop(enqueued_at: float) -> None:
    _recorder.record(enqueued_at)


class RQDriver(Driver):
    def __init__(self, workdir: str, redis_url: str) -> None:
        self.ledger = FileLedger(os.path.join(workdir, f"ledger-rq-{os.getpid()}"))
        self.redis = Redis.from_url(redis_url)
        self.redis.flushdb()  # compare.py checked the db was empty: anything here is a leftover
        self.queue = Queue(QUEUE, connection=self.redis)
        self._processes = WorkerProcesses(self.ledger)
        self._redis_url = redis_url

    def enqueue(self, enqueued_at: float) -> None:
        self.queue.enqueue("rq_trial.noop", enqueued_at)

    def start_workers(self) -> None:
        self._processes.start([__file__, "worker", self._redis_url], count=4)

    def worker_rss_kb(self) -> int:
        return self._processes.peak_rss_kb()

    def stop_workers(self) -> None:
        self._processes.stop()

    can_restart_empty = True

    def check(self) -> None:
        self._processes.check()

    def restart_empty(self) -> None:
        self._processes.stop()
        self.redis.flushdb()
        self.start_workers()
        warm_up(self)

    def close(self) -> None:
        self.stop_workers()
        self.redis.flushdb()
        self.redis.close()
        os.unlink(self.ledger.path)


def run_worker(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    worker = SimpleWorker([Queue(QUEUE, connection=redis)], connection=redis)
    worker.work(logging_level="WARNING")


def build(args: argparse.Namespace) -> Driver:
    return RQDriver(args.workdir, args.redis_url)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    if sys.argv[1] == "worker":
        run_worker(sys.argv[2])
    else:
        main_for(build, VARIANTS)
