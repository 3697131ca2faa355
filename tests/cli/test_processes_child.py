"""The child's end of ``--processes`` in one process: caps, commands, a vanished parent."""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import pytest

from backrun.cli._child import ChildLink, child_link_from_env, rss_bytes
from backrun.jobs import JobState
from tests.helpers import wait_until


class FakeWorker:
    id = "host-1-abcdef01"

    def __init__(self) -> None:
        self.stops = 0
        self.forced = 0

    def request_stop(self) -> None:
        self.stops += 1

    def force(self) -> None:
        self.forced += 1


class Finished:
    def __init__(self, state: JobState) -> None:
        self.state = state


def _lines(sock: socket.socket, count: int) -> list[str]:
    sock.settimeout(10)
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode().splitlines()


@pytest.fixture
def pair() -> Any:
    parent, child = socket.socketpair()
    yield parent, child
    parent.close()
    child.close()


def test_job_cap_stops_claiming_once_and_tells_the_parent_why(pair: Any) -> None:
    parent, child = pair
    link = ChildLink(child, max_jobs=5, max_memory_mb=None)
    worker = FakeWorker()
    link.worker_started(worker)  # type: ignore[arg-type]
    # Releases at shutdown are not jobs run; four threads finish the rest at once.
    link.attempt_finished(None, Finished(JobState.QUEUED), None)  # type: ignore[arg-type]
    threads = [
        threading.Thread(
            target=lambda: link.attempt_finished(None, Finished(JobState.SUCCEEDED), None)  # type: ignore[arg-type]
        )
        for _ in range(7)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ready, recycle = _lines(parent, 2)
    assert ready == f"ready {worker.id}"
    assert recycle.startswith("recycle max-jobs ")
    assert "(--max-jobs-per-child 5)" in recycle
    assert worker.stops == 1  # once, however many threads crossed the cap
    assert link.done == 7


def test_memory_cap_is_checked_while_idle(pair: Any) -> None:
    parent, child = pair
    assert rss_bytes() > 1024 * 1024
    link = ChildLink(child, max_jobs=None, max_memory_mb=1)
    worker = FakeWorker()
    link.worker_started(worker)  # type: ignore[arg-type]
    _, recycle = _lines(parent, 2)  # no job finished: the 1-second check found it
    assert recycle.startswith("recycle max-memory ")
    assert worker.stops == 1


def test_parent_commands_and_its_disappearance(pair: Any) -> None:
    parent, child = pair
    link = ChildLink(child, max_jobs=None, max_memory_mb=None)
    worker = FakeWorker()
    link.worker_started(worker)  # type: ignore[arg-type]
    parent.sendall(b"drain\n")
    wait_until(lambda: worker.stops == 1, what="drain to stop the worker")
    parent.sendall(b"for")  # a command split across reads still counts once whole
    parent.sendall(b"ce\nnonsense\n")
    wait_until(lambda: worker.forced == 1, what="force")
    parent.close()  # the parent died
    wait_until(lambda: worker.stops == 2, what="a vanished parent to stop the worker")


def test_no_link_without_the_variable_and_the_variable_is_not_inherited(
    monkeypatch: pytest.MonkeyPatch, pair: Any
) -> None:
    monkeypatch.delenv("BACKRUN_SUPERVISOR_FD", raising=False)
    assert child_link_from_env(max_jobs=None, max_memory_mb=None) is None
    _, child = pair
    monkeypatch.setenv("BACKRUN_SUPERVISOR_FD", str(child.dup().detach()))
    link = child_link_from_env(max_jobs=3, max_memory_mb=None)
    assert link is not None
    assert link.max_jobs == 3
    assert "BACKRUN_SUPERVISOR_FD" not in os.environ
    link.close()
    monkeypatch.setenv("BACKRUN_SUPERVISOR_FD", "not-a-number")
    assert child_link_from_env(max_jobs=None, max_memory_mb=None) is None
