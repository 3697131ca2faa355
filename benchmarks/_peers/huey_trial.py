"""One Huey trial (peers' venv): MemoryHuey, SqliteHuey or FileHuey, thread consumer, 4 workers.

The consumer runs in this process (``Consumer.start()``), as ``huey_consumer -k
thread -w 4`` would; MemoryHuey can only work that way. Consumer settings are
Huey's defaults (idle workers poll from 0.1 s, backing off to 10 s). FileHuey
gets ``use_thread_lock=True``, which Huey's docs prescribe for thread workers.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from typing import Any

from _common import Driver, MemoryLedger, main_for, warm_up
from huey import FileHuey, MemoryHuey, SqliteHuey

VARIANTS = ("memory", "sqlite", "file")


class HueyDriver(Driver):
    def __init__(self, variant: str, workdir: str) -> None:
        self.ledger = MemoryLedger()
        self._path = os.path.join(workdir, f"huey-{variant}-{os.getpid()}")
        huey: Any
        if variant == "memory":
            huey = MemoryHuey("bench")
        elif variant == "sqlite":
            os.makedirs(self._path)
            huey = SqliteHuey("bench", filename=os.path.join(self._path, "huey.db"))
        else:
            # Huey's file lock shares one descriptor between threads and deadlocks
            # under the thread consumer; its docs prescribe the thread lock then.
            huey = FileHuey("bench", path=self._path, use_thread_lock=True)
        self.huey = huey
        record = self.ledger.record

        @huey.task()
        def noop(enqueued_at: float) -> None:
            record(enqueued_at)

        self._task = noop
        self._consumer: Any = None

    def enqueue(self, enqueued_at: float) -> None:
        self._task(enqueued_at)

    def start_workers(self) -> None:
        self._consumer = self.huey.create_consumer(workers=4, worker_type="thread", periodic=False)
        self._consumer.start()

    def stop_workers(self) -> None:
        if self._consumer is not None:
            self._consumer.stop(graceful=True)
            self._consumer = None

    can_restart_empty = True

    def restart_empty(self) -> None:
        self.stop_workers()
        self.huey.flush()
        self.start_workers()
        warm_up(self)

    def close(self) -> None:
        self.stop_workers()
        shutil.rmtree(self._path, ignore_errors=True)


def build(args: argparse.Namespace) -> Driver:
    logging.getLogger("huey").setLevel(logging.WARNING)
    return HueyDriver(args.variant, args.workdir)


if __name__ == "__main__":
    main_for(build, VARIANTS)
