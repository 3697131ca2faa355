"""``flask backrun ...`` as a new user meets it (issue 11: 1, 3, 4, 6).

A tiny app (``flask_support/tinyapp.py``) whose handler logs through
``current_app.logger``, run by ``flask backrun worker`` in a subprocess.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest

from backrun import Engine, JsonFileStorage
from tests.cli.procs import REPO, Proc, run
from tests.helpers import wait_until

pytest.importorskip("flask")

SUPPORT = Path(__file__).parent / "flask_support"
APPS = REPO / "tests" / "cli" / "apps"
NO_EXTRA = "import no_otel_sdk; from flask.cli import main; main()"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "TINY_INSTANCE": str(tmp_path / "instance"),
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(APPS), str(REPO)]),
        **extra,
    }


def _flask(*args: str) -> list[str]:
    return [sys.executable, "-m", "flask", "--app", "tinyapp", "backrun", *args]


def test_current_app_logger_lines_appear_once_with_the_job(tmp_path: Path) -> None:
    store = tmp_path / "instance" / "jobs"
    env = _env(tmp_path, TINY_STORE="jobs")  # relative: under the instance folder
    store.mkdir(parents=True, mode=0o700)
    (tmp_path / "instance").chmod(0o700)
    producer = Engine(JsonFileStorage(store))
    producer.add_handler(lambda payload: None, name="hello")  # the web side only enqueues
    try:
        job = producer.enqueue("hello", {"n": 5})
        worker = Proc(_flask("worker"), cwd=tmp_path, env=env)
        try:
            line = worker.wait_for(r"store: ")
            worker.wait_for(r"hello from flask 5")
            wait_until(lambda: producer.get(job.id).state.value == "succeeded", what="the job")
            worker.signal(signal.SIGTERM)
            assert worker.wait() == 0, worker.output
        finally:
            worker.kill()
    finally:
        producer.close()
    assert line.strip() == f"store:       JsonFileStorage ({store})"
    hello = [entry for entry in worker.lines if "hello from flask 5" in entry]
    assert len(hello) == 1, worker.output  # not twice (Flask's own handler is not added)
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d [\d:,]+ INFO tinyapp: hello\[{job.id}\] #1: hello from flask 5",
        hello[0],
    ), hello


def test_a_relative_store_does_not_depend_on_the_current_directory(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    env = _env(tmp_path, TINY_STORE="var/backrun")
    for cwd in (one, two):
        result = run(_flask("stats", "--json"), cwd=cwd, env=env)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "instance" / "var" / "backrun" / "q").is_dir()
    assert not (one / "var").exists()
    assert not (two / "var").exists()


@pytest.mark.parametrize("command", [["worker"], ["jobs", "list"]])
def test_a_bad_store_is_one_line_and_exit_3(tmp_path: Path, command: list[str]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = run(_flask(*command), cwd=tmp_path, env=_env(tmp_path, TINY_STORE=str(shared)))
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: store unavailable: refusing the job store ")


def test_worker_without_the_otel_extra_says_what_to_install_and_runs(tmp_path: Path) -> None:
    env = _env(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    worker = Proc(
        [sys.executable, "-c", NO_EXTRA, "--app", "tinyapp", "backrun", "worker"],
        cwd=tmp_path,
        env=env,
    )
    try:
        worker.wait_for("ready: waiting for jobs")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    finally:
        worker.kill()
    assert "Traceback" not in worker.output
    hints = [line for line in worker.lines if "pip install 'backrun[otel]'" in line]
    assert len(hints) == 1, worker.output
