"""Fixtures for the CLI tests: a fresh store, the test app on it, jobs a worker ran."""

from __future__ import annotations

import importlib.util
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.cli.procs import Proc
from tests.helpers import wait_until

APPS = Path(__file__).parent / "apps"
_names = itertools.count()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def app_env(store: Path) -> dict[str, str]:
    return {"CLI_TEST_STORE": str(store)}


@pytest.fixture
def cliapp(store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The test app, imported in this process on the test's store (to enqueue and inspect)."""
    module = load_app("cliapp", store, monkeypatch)
    yield module
    module.engine.close()


def load_app(name: str, store: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``tests/cli/apps/<name>.py`` afresh in this process, on the test's store."""
    monkeypatch.setenv("CLI_TEST_STORE", str(store))
    spec = importlib.util.spec_from_file_location(f"{name}_{next(_names)}", APPS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def state_of(module: ModuleType, job_id: str) -> str:
    """The job's state value as the test app's engine reads it ("" if missing)."""
    job = module.engine.get(job_id)
    return "" if job is None else str(job.state.value)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The result's stderr is exactly one ``error:`` line and no traceback."""
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture
def finished_jobs(cliapp: ModuleType, app_env: dict[str, str]) -> dict[str, str]:
    """Three jobs run by a real worker: one succeeded, one dead after 2 attempts, one more ok."""
    engine = cliapp.engine
    ok = engine.enqueue("work", {"n": 1}).id
    bad = engine.enqueue("work", {"n": -5}).id
    other = engine.enqueue("work", {"n": 2}, queue="mail").id
    worker = Proc(
        [sys.executable, "-m", "backrun", "worker", "cliapp:engine"], cwd=APPS, env=app_env
    )
    try:
        wait_until(
            lambda: (
                (state_of(cliapp, ok), state_of(cliapp, bad), state_of(cliapp, other))
                == ("succeeded", "dead", "succeeded")
            ),
            what="the worker to finish the three jobs",
        )
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    finally:
        worker.kill()
    out = worker.output
    assert f"work[{ok}] succeeded in " in out
    assert f"work[{bad}] failed (ValueError: negative: -5) attempt 1/2, retry in " in out
    assert f"work[{bad}] failed (ValueError: negative: -5) dead after 2 attempts" in out
    assert "worker stopped cleanly" in out
    return {"ok": ok, "bad": bad, "other": other}


@pytest.fixture
def immutable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can write into, root included (or skip where that is impossible)."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(locked)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot make a directory unwritable for root here: {done.stderr!r}")
    else:
        locked.chmod(0o500)
    try:
        yield locked
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        locked.chmod(0o700)
