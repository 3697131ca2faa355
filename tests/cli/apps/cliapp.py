"""The app the CLI tests run: a JSON store named by $CLI_TEST_STORE, three kinds of job."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import tenacity
from pydantic import BaseModel

import backrun

STORE = Path(os.environ["CLI_TEST_STORE"])

engine = backrun.Engine(
    backrun.JsonFileStorage(STORE, fsync=False),
    retry=backrun.RetryPolicy(max_retries=1, wait=tenacity.wait_fixed(0.1)),
    shutdown_timeout=20.0,
)

not_an_engine = {"engine": "no"}


class Item(BaseModel):
    n: int


@engine.handler(name="work")
def work(item: Item) -> None:
    """Fails for negative numbers; n == 99 waits until the test creates the ``go`` file."""
    if item.n < 0:
        raise ValueError(f"negative: {item.n}")
    if item.n == 99:
        gate = STORE.parent / "go"
        pause = threading.Event()
        while not gate.exists():
            pause.wait(0.01)
