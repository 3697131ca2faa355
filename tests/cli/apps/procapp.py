"""The app the ``--processes`` tests run: a JSON store named by $CLI_TEST_STORE.

Every attempt of ``record`` appends ``<job id> <pid>`` to ``runs.log`` beside
the store (one small O_APPEND write: lines from many processes never mix), so
a test can count how often each job ran and in which process.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from pydantic import BaseModel

import backrun

STORE = Path(os.environ["CLI_TEST_STORE"])
RUNS = STORE.parent / "runs.log"

engine = backrun.Engine(
    backrun.JsonFileStorage(STORE, fsync=False),
    retry=backrun.RetryPolicy(max_retries=5),
    shutdown_timeout=20.0,
    recovery_interval=0.5,
    max_crashes=2,
)


class Item(BaseModel):
    n: int


def _log(ctx: backrun.JobContext) -> None:
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{ctx.job.id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@engine.handler(name="record")
def record(item: Item, ctx: backrun.JobContext) -> None:
    """Log the run; n == 99 then waits until the test creates the ``go`` file."""
    _log(ctx)
    if item.n == 99:
        gate = STORE.parent / "go"
        pause = threading.Event()
        while not gate.exists():
            pause.wait(0.01)


@engine.handler(name="poison")
def poison(item: Item, ctx: backrun.JobContext) -> None:
    """Kill this worker process outright, as a segfault or the OOM killer would."""
    _log(ctx)
    os.kill(os.getpid(), signal.SIGKILL)
