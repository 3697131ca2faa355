"""A worker process for the poison-neighbour crash test, on a JSON or PostgreSQL store.

Usage:
  poison_worker.py json STORE_DIR [--threads N] [--lease S] [--recovery S]
  poison_worker.py postgres DSN SCHEMA [--threads N] [--lease S] [--recovery S]

Handlers: ``nap`` sleeps ``payload.seconds`` (an innocent job); ``poison``
kills its own process with SIGKILL, as a segfaulting C extension or an OOM
kill would. Prints ``ready`` once started; runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pydantic import BaseModel

import backrun
from backrun.storage.base import Storage


class Nap(BaseModel):
    seconds: float = 0.5


def open_store(args: argparse.Namespace, lease: timedelta) -> Storage:
    if args.kind == "json":
        return backrun.JsonFileStorage(args.target[0], fsync=False)
    from backrun.storage.postgres import PostgresStorage

    dsn, schema = args.target
    # Live for register_ttl until its first heartbeat; a dead worker is noticed that soon.
    return PostgresStorage(dsn, schema=schema, pool_size=args.threads + 2, register_ttl=lease)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["json", "postgres"])
    parser.add_argument("target", nargs="+")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--recovery", type=float, default=0.2)
    parser.add_argument("--max-crashes", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    lease = timedelta(seconds=args.lease)
    engine = backrun.Engine(
        open_store(args, lease),
        threads=args.threads,
        lease=lease,
        recovery_interval=args.recovery,
        max_crashes=args.max_crashes,
        middleware=[],
        shutdown_timeout=5.0,
    )

    @engine.handler(name="nap")
    def nap(payload: Nap) -> None:
        time.sleep(payload.seconds)

    @engine.handler(name="poison")
    def poison(payload: Nap) -> None:
        time.sleep(0.05)  # let the neighbours get going first
        os.kill(os.getpid(), signal.SIGKILL)

    print("ready", flush=True)
    engine.run_forever()
    engine.close()


if __name__ == "__main__":
    main()
