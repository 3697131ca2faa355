"""A worker process for the schedule tests: one ``every`` schedule, a ledger of the ticks it ran.

Usage: schedules_worker.py LEDGER (--json STORE | --postgres DSN SCHEMA) [--every SECONDS]
       [--misfire once|skip] [--start-mid-interval]

The handler appends ``run <tick run_at, ns> <job id> <pid>`` to LEDGER (one
``O_APPEND`` write per line, so lines from several processes never
interleave), after ``up <time, ns> - <pid>`` once it starts its worker.
``--start-mid-interval`` waits until half an interval after a tick first, so a
test knows whether the latest tick is on time for it. ``run_forever`` runs
until SIGTERM; the tests SIGKILL it too.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import backrun
from backrun.schedules import SCHEDULE_HEADER
from backrun.storage.base import Storage

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Beat(BaseModel):
    """No payload."""


def write(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ledger")
    parser.add_argument("--json")
    parser.add_argument("--postgres", nargs=2, metavar=("DSN", "SCHEMA"))
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--misfire", default="once")
    parser.add_argument("--start-mid-interval", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(created).3f %(name)s %(message)s"
    )
    if os.environ.get("BACKRUN_TEST_SCHEDULER_LOG"):
        logging.getLogger("backrun.scheduler").setLevel(logging.INFO)
    faulthandler.register(signal.SIGUSR1)  # a stuck worker's stacks, for debugging
    storage: Storage
    if args.json:
        from backrun.storage.jsonfile import JsonFileStorage

        storage = JsonFileStorage(args.json, fsync=False, poll_interval=0.05)
    else:
        from backrun.storage.postgres import PostgresStorage

        dsn, schema = args.postgres
        storage = PostgresStorage(dsn, schema=schema, pool_size=4, poll_interval=0.05)
    engine = backrun.Engine(
        storage, middleware=[], recovery_interval=0.3, max_crashes=1000, shutdown_timeout=2
    )

    @engine.handler(name="beat")
    def beat(payload: Beat, ctx: backrun.JobContext) -> None:
        assert ctx.job.run_at is not None
        assert ctx.job.headers[SCHEDULE_HEADER] == "beat"
        ns = (ctx.job.run_at - EPOCH) // timedelta(microseconds=1) * 1000
        write(args.ledger, f"run {ns} {ctx.job.id} {os.getpid()}")

    engine.schedule("beat", every=args.every, name="beat", misfire=args.misfire)
    if args.start_mid_interval:  # come back half an interval after a tick, not on one
        period = int(args.every * 1e9)
        time.sleep(((time.time_ns() // period) * period + period * 3 // 2 - time.time_ns()) / 1e9)
    write(args.ledger, f"up {time.time_ns()} - {os.getpid()}")
    engine.run_forever()


if __name__ == "__main__":
    main()
