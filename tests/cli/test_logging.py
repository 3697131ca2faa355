"""The worker's log: the application's loggers appear, with the job, in one format (issue 11.3)."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.cli.conftest import APPS
from tests.cli.procs import Proc
from tests.helpers import wait_until

_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


@pytest.fixture
def logapp(store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("CLI_TEST_STORE", str(store))
    spec = importlib.util.spec_from_file_location("logapp_local", APPS / "logapp.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    module.engine.close()


def _finished(app: ModuleType, *ids: str) -> bool:
    jobs = [app.engine.get(i) for i in ids]
    return all(j is not None and j.finished for j in jobs)


def _run_worker(app: ModuleType, app_env: dict[str, str], *options: str) -> tuple[Proc, list[str]]:
    ids = [app.engine.enqueue("greet", {"n": n}).id for n in (7, -3)]
    worker = Proc(
        [sys.executable, "-m", "backrun", "worker", "logapp:engine", *options],
        cwd=APPS,
        env=app_env,
    )
    try:
        worker.wait_for("ready: waiting for jobs")
        wait_until(lambda: _finished(app, *ids), what="both jobs to finish")
        worker.wait_for(rf"greet\[{ids[1]}\] failed")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    finally:
        worker.kill()
    return worker, ids


def test_handler_logs_appear_with_the_job_in_one_text_format(
    logapp: ModuleType, app_env: dict[str, str]
) -> None:
    worker, (ok, bad) = _run_worker(logapp, app_env)
    lines = worker.lines
    # The handler's own logger, tagged with the job that logged it.
    assert any(
        re.fullmatch(rf"{_TIME} INFO logapp: greet\[{ok}\] #1: greeting number 7", line)
        for line in lines
    ), worker.output
    # A Python warning is a log line too, with time, level and the job.
    assert any(
        re.match(rf"{_TIME} WARNING py\.warnings: greet\[{ok}\] #1: .*seven is unlucky", line)
        for line in lines
    ), worker.output
    # The failure line carries the exception's message, not just its type.
    assert any(
        re.fullmatch(
            rf"{_TIME} ERROR backrun\.jobs: greet\[{bad}\] failed "
            r"\(ValueError: cannot greet -3\) dead after 1 attempt",
            line,
        )
        for line in lines
    ), worker.output
    assert "debug detail" not in worker.output  # --log-level defaults to info
    stopped = [line for line in lines if "worker stopped cleanly" in line]
    assert len(stopped) == 1
    assert re.match(rf"{_TIME} INFO backrun\.cli: ", stopped[0])


def test_json_log_is_json_on_every_line_and_log_level_applies(
    logapp: ModuleType, app_env: dict[str, str]
) -> None:
    worker, (ok, _) = _run_worker(logapp, app_env, "--log-format", "json", "--log-level", "debug")
    records = [json.loads(line) for line in worker.lines]  # no plain line mixed in
    mine = [r for r in records if r["logger"] == "logapp"]
    assert {r["message"] for r in mine if r["job_id"] == ok} == {
        "greeting number 7",
        "debug detail for 7",
    }
    assert all(r["handler"] == "greet" and r["attempt"] == 1 for r in mine)
    banner = [r for r in records if r.get("event") == "worker.banner"]
    assert len(banner) == 1
    assert banner[0]["handlers"] == ["greet"]


def test_log_level_warning_hides_info_lines(logapp: ModuleType, app_env: dict[str, str]) -> None:
    worker, (ok, bad) = _run_worker(logapp, app_env, "--log-level", "WARNING")
    assert "greeting number" not in worker.output
    assert f"greet[{ok}] started" not in worker.output
    assert f"greet[{bad}] failed (ValueError: cannot greet -3)" in worker.output


def test_an_unknown_log_level_is_a_usage_error(app_env: dict[str, str]) -> None:
    from tests.cli.procs import backrun as run_backrun

    result = run_backrun("worker", "logapp:engine", "--log-level", "loud", cwd=APPS, env=app_env)
    assert result.returncode == 2
    assert "unknown log level 'loud'" in result.stderr
