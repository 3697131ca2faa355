"""A worker process for the PostgreSQL crash tests, run as a script.

Usage: postgres_worker.py DSN SCHEMA RECORD_FILE [--threads N] [--lease S] [--recovery S]

Handlers:
  ``crash.record``: appends ``<job id> <pid>`` to RECORD_FILE (one atomic
  O_APPEND write), so the test can count executions per job across processes.
  ``crash.block``: records ``started <job id> <pid>``, then waits until the
  file named in its payload exists (a long job the test controls).

Runs until SIGTERM, then drains and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pydantic import BaseModel

import backrun
from backrun.storage.postgres import PostgresStorage


class Item(BaseModel):
    n: int = 0


class Block(BaseModel):
    release: str


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("schema")
    parser.add_argument("record")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--recovery", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    lease = timedelta(seconds=args.lease)
    # A worker counts as live for register_ttl until its first heartbeat (lease/3 later).
    store = PostgresStorage(
        args.dsn, schema=args.schema, pool_size=args.threads + 2, register_ttl=lease
    )
    engine = backrun.Engine(
        store,
        threads=args.threads,
        lease=lease,
        recovery_interval=args.recovery,
        middleware=[],
        shutdown_timeout=5.0,
    )
    fd = os.open(args.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    pid = os.getpid()

    @engine.handler(name="crash.record")
    def record(payload: Item, ctx: backrun.JobContext) -> None:
        os.write(fd, f"{ctx.job.id} {pid}\n".encode())

    @engine.handler(name="crash.block")
    def block(payload: Block, ctx: backrun.JobContext) -> None:
        os.write(fd, f"started {ctx.job.id} {pid}\n".encode())
        release = Path(payload.release)
        deadline = time.monotonic() + 120  # the test releases it far sooner, or kills us
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.write(fd, f"{ctx.job.id} {pid}\n".encode())

    print("ready", flush=True)
    engine.run_forever()
    engine.close()


if __name__ == "__main__":
    main()
