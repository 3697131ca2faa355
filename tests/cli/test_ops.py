"""``backrun workers`` and ``backrun queues``, run as real commands on a JSON store."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import backrun
from tests.cli.procs import REPO, Proc
from tests.cli.procs import backrun as run_backrun
from tests.helpers import wait_until


def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    backrun.JsonFileStorage(path, fsync=False).close()
    return path


def test_queues_pause_list_resume(tmp_path: Path) -> None:
    path = str(store(tmp_path))
    done = run_backrun("queues", "pause", "mail", "--store", path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "queue mail paused\n"
    again = run_backrun("queues", "pause", "mail", "--store", path, cwd=tmp_path)
    assert again.stdout == "queue mail was paused already\n"
    listing = run_backrun("queues", "list", "--store", path, "--json", cwd=tmp_path)
    assert json.loads(listing.stdout) == {
        "queues": [{"queue": "mail", "paused": True, "waiting": 0, "running": 0}]
    }
    resumed = run_backrun("queues", "resume", "mail", "--store", path, "--json", cwd=tmp_path)
    assert json.loads(resumed.stdout) == {"queue": "mail", "paused": False, "changed": True}
    check = backrun.JsonFileStorage(path, fsync=False)
    assert check.paused_queues() == frozenset()
    check.close()


def test_queues_pause_refuses_a_bad_name(tmp_path: Path) -> None:
    done = run_backrun("queues", "pause", "no way", "--store", str(store(tmp_path)), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: queue names")


def test_workers_lists_a_worker_of_another_process(tmp_path: Path) -> None:
    path = store(tmp_path)
    empty = run_backrun("workers", "--store", str(path), cwd=tmp_path)
    assert empty.stdout == "no live workers\n"
    proc = Proc(
        [sys.executable, "-m", "backrun", "worker", "tests.fixtures.opsapp:engine"],
        cwd=REPO,
        env={"OPS_STORE": str(path)},
    )
    try:
        proc.wait_for("started", timeout=30)

        def listed() -> list[dict[str, object]]:
            out = run_backrun("workers", "--store", str(path), "--json", cwd=tmp_path).stdout
            workers: list[dict[str, object]] = json.loads(out)["workers"]
            return workers

        wait_until(lambda: len(listed()) == 1, what="the worker in `backrun workers`")
        (worker,) = listed()
        assert worker["pid"] == proc.popen.pid
        assert worker["running"] == []
        text = run_backrun("workers", "--store", str(path), cwd=tmp_path).stdout
        assert text.splitlines()[0].split() == [
            "ID", "HOST", "PID", "QUEUES", "RUNNING", "UP", "SEEN"
        ]  # fmt: skip
        assert str(proc.popen.pid) in text
    finally:
        proc.signal(signal.SIGTERM)
        proc.wait(20)
