"""``--processes`` metrics on one port, and ``--reload`` restarting the worker on an edit."""

from __future__ import annotations

import importlib.util
import itertools
import re
import signal
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from backrun.jobs import JobState
from tests.cli.conftest import APPS
from tests.cli.procs import Proc
from tests.helpers import wait_until

_names = itertools.count()

HOT = """
import os
import threading
from pathlib import Path

from pydantic import BaseModel

import backrun

STORE = Path(os.environ["CLI_TEST_STORE"])
engine = backrun.Engine(
    backrun.JsonFileStorage(STORE, fsync=False), shutdown_timeout=20.0, middleware=[]
)
VERSION = {version!r}


class Item(BaseModel):
    name: str


@engine.handler(name="hot")
def hot(item: Item) -> None:
    if item.name == "held":
        pause = threading.Event()
        while not (STORE.parent / "go").exists():
            pause.wait(0.01)
    (STORE.parent / item.name).write_text(VERSION)
"""


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"hot_{next(_names)}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "hot.py").write_text(HOT.format(version="v1"))
    monkeypatch.setenv("CLI_TEST_STORE", str(root / "store"))
    return root


def test_reload_drains_then_restarts_and_the_new_code_runs_the_next_job(project: Path) -> None:
    pytest.importorskip("watchfiles")
    app = _load(project / "hot.py")
    env = {"CLI_TEST_STORE": str(project / "store")}
    args = [sys.executable, "-m", "backrun", "worker", "hot:engine", "--reload"]
    worker = Proc(args, cwd=project, env=env)
    try:
        worker.wait_for(r"ready: waiting for jobs", timeout=20)
        held = app.engine.enqueue("hot", {"name": "held"}).id
        wait_until(lambda: app.engine.get(held).state is JobState.RUNNING, what="the held job")
        # A different length too: a .pyc is trusted on (mtime seconds, size).
        (project / "hot.py").write_text(HOT.format(version="version 2"))
        worker.wait_for(r"reloading: hot\.py changed; draining the running jobs first")
        assert "reloaded" not in worker.output  # the running job is drained first
        (project / "go").touch()
        worker.wait_for(r"reloaded: starting 1 child process")
        after = app.engine.enqueue("hot", {"name": "after"}).id
        wait_until(lambda: app.engine.get(after).state is JobState.SUCCEEDED, what="the next job")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    finally:
        worker.kill()
        app.engine.close()
    held_job = app.engine.get(held)
    assert (held_job.state, held_job.attempts) == (JobState.SUCCEEDED, 1)
    assert (project / "held").read_text() == "v1"
    assert (project / "after").read_text() == "version 2"


@pytest.fixture
def procapp(store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("CLI_TEST_STORE", str(store))
    module = _load(APPS / "procapp.py")
    yield module
    module.engine.close()


def _pids(log: Path) -> set[str]:
    return set(re.findall(r" (\d+)\n", log.read_text())) if log.exists() else set()


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_children_metrics_are_served_merged_on_the_parents_port(
    procapp: ModuleType, app_env: dict[str, str], store: Path, tmp_path: Path
) -> None:
    # Two held jobs first: one in each child (one thread each), so both children count.
    ids = [procapp.engine.enqueue("record", {"n": 99}).id for _ in range(2)]
    ids += [procapp.engine.enqueue("record", {"n": i}).id for i in range(6)]
    log = store.parent / "runs.log"
    temp = tmp_path / "temp"  # where the parent makes its private multiprocess directory
    temp.mkdir()
    parent = Proc(
        [sys.executable, "-m", "backrun", "worker", "procapp:engine", "--processes", "2",
         "--threads", "1", "--metrics-port", "0"],
        cwd=APPS,
        env={**app_env, "TMPDIR": str(temp)},
    )  # fmt: skip
    try:
        line = parent.wait_for(r"  metrics:     http://")
        url = line.split()[-1]
        wait_until(lambda: len(_pids(log)) == 2, timeout=20, what="both children to hold a job")
        (store.parent / "go").touch()
        wait_until(
            lambda: all(procapp.engine.get(i).state is JobState.SUCCEEDED for i in ids),
            what="the jobs to succeed",
        )

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())

        wait_until(
            lambda: _sample(scrape(), "backrun_jobs_completed_total", outcome="succeeded") == 8,
            what="8 successes counted over both children",
        )
        text = scrape()
        [private] = temp.iterdir()
        assert private.stat().st_mode & 0o777 == 0o700
        parent.signal(signal.SIGTERM)
        assert parent.wait() == 0, parent.output
    finally:
        parent.kill()
    assert list(temp.iterdir()) == []  # removed at exit
    backrun_lines = [x for x in text.splitlines() if x.startswith("backrun_")]
    assert not any("pid=" in x for x in backrun_lines)
    assert _sample(text, "backrun_jobs_running", handler="record") == 0
    assert _sample(text, "backrun_queue_jobs", state="succeeded") == 8
