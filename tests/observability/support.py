"""Helpers for the observability tests: jobs and attempt contexts without an engine."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from backrun.context import JobContext
from backrun.jobs import Job, JobState, new_job_id

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def make_job(**changes: Any) -> Job:
    """A QUEUED job as enqueued (before any middleware)."""
    fields: dict[str, Any] = {
        "id": new_job_id(),
        "handler": "emails.send",
        "payload": {"to": "a@example.com"},
        "queue": "mail",
        "run_at": T0,
        "created_at": T0,
    }
    fields.update(changes)
    return Job(**fields)


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


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)


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
