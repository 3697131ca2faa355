"""Helpers for the observability tests: jobs and attempt contexts without an engine."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from backrun.context import JobContext
from backrun.jobs import Job, JobState
from tests.helpers import make_job as shared_make_job

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def make_job(**changes: Any) -> Job:
    """A QUEUED job as enqueued (before any middleware): the shared factory, mail defaults."""
    fields: dict[str, Any] = {
        "handler": "emails.send",
        "payload": {"to": "a@example.com"},
        "queue": "mail",
        "state": JobState.QUEUED,  # whatever its run_at: these tests set the state they need
    }
    fields.update(changes)
    return shared_make_job(at=T0, **fields)


def claimed(job: Job, *, wait: float = 2.5, attempt: int = 1) -> Job:
    """``job`` as a claim returns it: RUNNING, started ``wait`` seconds after run_at."""
    assert job.run_at is not None
    return job.replace(
        state=JobState.RUNNING,
        attempts=attempt,
        started_at=job.run_at + timedelta(seconds=wait),
        worker_id="host-1-abcdef12",
        claim_token="t",
    )


def make_ctx(job: Job) -> JobContext:
    """The context of the attempt of a claimed ``job``."""
    return JobContext(
        job=job,
        attempt=job.attempts,
        worker_id="host-1-abcdef12",
        deadline=None,
        engine=cast(Any, None),
    )


def require_binary(name: str) -> str:
    """Path of a binary the test needs: skip without it, but fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install -y prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def read_json_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> dict[str, Any]:
    """Read the next JSON line a subprocess prints, failing after ``timeout`` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no output from {proc.args!r} within {timeout}s")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"{proc.args!r} exited ({proc.poll()}) before printing")
            result: dict[str, Any] = json.loads(line)
            return result


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
