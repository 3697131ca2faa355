"""The ``--processes`` app on PostgreSQL ($CLI_TEST_DSN, $CLI_TEST_SCHEMA): a poison job."""

from __future__ import annotations

import os
import signal

import backrun
from backrun.storage.postgres import PostgresStorage

engine = backrun.Engine(
    PostgresStorage(os.environ["CLI_TEST_DSN"], schema=os.environ["CLI_TEST_SCHEMA"], pool_size=2),
    retry=backrun.RetryPolicy(max_retries=3),
    recovery_interval=0.5,
    max_crashes=1,
    middleware=[],
)


@engine.handler(name="poison")
def poison(payload: dict[str, int]) -> None:
    """Kill this worker process outright."""
    os.kill(os.getpid(), signal.SIGKILL)


@engine.handler(name="fine")
def fine(payload: dict[str, int]) -> None:
    """Succeed."""
