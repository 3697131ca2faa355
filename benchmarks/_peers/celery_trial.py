"""One Celery trial (peers' venv): Redis broker, a worker process with ``--pool threads -c 4``.

Results are ignored (no result backend), gossip, mingle and heartbeats are
off, as for a plain ``celery -A app worker --pool threads -c 4``; everything
else is Celery's default (prefetch multiplier 4, late ack off).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from _common import Driver, FileLedger, FileRecorder, WorkerProcesses, main_for, warm_up
from celery import Celery
from redis import Redis

VARIANTS = ("redis",)
QUEUE = "bench"
_recorder = FileRecorder()


def make_app(redis_url: str) -> Celery:
    app = Celery("bench", broker=redis_url)
    app.conf.update(
        task_ignore_result=True,
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="bench.noop")
    def noop(enqueued_at: float) -> None:
        _recorder.record(enqueued_at)

    return app


class CeleryDriver(Driver):
    can_restart_empty = True

    def __init__(self, workdir: str, redis_url: str) -> None:
        self.ledger = FileLedger(os.path.join(workdir, f"ledger-celery-{os.getpid()}"))
        self.app = make_app(redis_url)
        self.task = self.app.tasks["bench.noop"]
        self.redis = Redis.from_url(redis_url)
        self.redis.flushdb()  # compare.py checked the db was empty: anything here is a leftover
        self._processes = WorkerProcesses(self.ledger)
        self._redis_url = redis_url

    def enqueue(self, enqueued_at: float) -> None:
        self.task.delay(enqueued_at)

    def start_workers(self) -> None:
        self._processes.start([__file__, "worker", self._redis_url])

    def worker_rss_kb(self) -> int:
        return self._processes.peak_rss_kb()

    def stop_workers(self) -> None:
        self._processes.stop()

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
    make_app(redis_url).worker_main(
        [
            "worker",
            "--pool=threads",
            "--concurrency=4",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
            f"--queues={QUEUE}",
        ]
    )


def build(args: argparse.Namespace) -> Driver:
    return CeleryDriver(args.workdir, args.redis_url)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    if sys.argv[1] == "worker":
        run_worker(sys.argv[2])
    else:
        main_for(build, VARIANTS)
