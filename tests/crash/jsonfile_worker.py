"""A worker process for the crash tests: an Engine on a JSON store, writing an execution ledger.

Usage: jsonfile_worker.py STORE LEDGER [--threads N] [--recovery SECONDS] [--lease SECONDS]

The handler ``work`` appends ``start <job id> <pid>`` to LEDGER when it begins
and ``done <job id> <pid>`` when it ends (each line one ``O_APPEND`` write,
so lines from several processes never interleave). The store appends
``completed <job id> <pid>`` after it has recorded a job's success, which is
how a test counts completions the store accepted. ``run_forever`` runs until
SIGTERM; SIGKILL is what the tests use to crash it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import backrun
from backrun.jobs import Job, JobState
from backrun.storage.jsonfile import JsonFileStorage


class Work(BaseModel):
    """How long a job sleeps (seconds), or until a file appears."""

    sleep: float = 0.0
    until: str | None = None


class Ledger:
    """Appends whole lines to a file shared by every process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()

    def write(self, event: str, job_id: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{event} {job_id} {self.pid} {time.time():.6f}\n".encode())
        finally:
            os.close(fd)


class LedgerStorage(JsonFileStorage):
    """A JSON store that notes each success it has recorded."""

    ledger: Ledger

    def update(self, job: Job) -> None:
        super().update(job)
        if job.state is JobState.SUCCEEDED:
            self.ledger.write("completed", job.id)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("ledger")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--recovery", type=float, default=0.5)
    parser.add_argument("--lease", type=float, default=60.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    ledger = Ledger(args.ledger)
    store = LedgerStorage(args.store, fsync=False)
    store.ledger = ledger
    engine = backrun.Engine(
        store,
        threads=args.threads,
        middleware=[],
        recovery_interval=args.recovery,
        lease=timedelta(seconds=args.lease),
        max_crashes=1000,
        shutdown_timeout=5,
    )

    @engine.handler(name="work")
    def work(payload: Work, ctx: backrun.JobContext) -> None:
        ledger.write("start", ctx.job.id)
        if payload.until is not None:
            deadline = time.monotonic() + 60
            while not os.path.exists(payload.until) and time.monotonic() < deadline:
                time.sleep(0.01)
        elif payload.sleep:
            time.sleep(payload.sleep)
        ledger.write("done", ctx.job.id)

    engine.run_forever()


if __name__ == "__main__":
    main()
