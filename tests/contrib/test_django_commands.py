"""``manage.py backrun_worker``/``backrun``/``check`` as a new user meets them (issue 11: 1, 4, 6).

Each test runs ``manage.py`` of the example project in a subprocess, with
``varied_settings`` choosing the store, ``BASE_DIR`` and whether the ``otel``
extra looks installed.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.cli.procs import REPO, Proc, run

pytest.importorskip("django")

EXAMPLE = REPO / "examples" / "django_site"
SUPPORT = Path(__file__).parent / "django_support"
APPS = REPO / "tests" / "cli" / "apps"
# manage.py, after making the otel extra look uninstalled.
NO_EXTRA = (
    "import no_otel_sdk, runpy, sys; sys.argv = ['manage.py', *sys.argv[1:]]; "
    "runpy.run_path('manage.py', run_name='__main__')"
)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "MYSITE_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_SETTINGS_MODULE": "varied_settings",
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(APPS), str(REPO)]),
        **extra,
    }


def _manage(*args: str) -> list[str]:
    return [sys.executable, "manage.py", *args]


@pytest.fixture
def open_store(tmp_path: Path) -> Path:
    """A store directory everyone may write into (mode 0777): backrun refuses it."""
    store = tmp_path / "shared"
    store.mkdir()
    store.chmod(0o777)
    return store


@pytest.mark.parametrize(
    "command", [["backrun_worker"], ["backrun", "jobs", "list"], ["backrun", "stats"]]
)
def test_a_bad_store_is_one_line_and_exit_3_like_backrun_worker(
    tmp_path: Path, open_store: Path, command: list[str]
) -> None:
    result = run(
        _manage(*command), cwd=EXAMPLE, env=_env(tmp_path, TEST_BACKRUN_STORE=str(open_store))
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: store unavailable: refusing the job store ")
    assert "writable by group or others (mode 777)" in lines[0]


def test_manage_py_check_reports_an_unusable_store(tmp_path: Path, open_store: Path) -> None:
    result = run(
        _manage("check"), cwd=EXAMPLE, env=_env(tmp_path, TEST_BACKRUN_STORE=str(open_store))
    )
    assert result.returncode == 1
    assert "backrun.E002" in result.stderr
    assert "writable by group or others" in result.stderr
    fine = run(
        _manage("check"),
        cwd=EXAMPLE,
        env=_env(tmp_path, TEST_BACKRUN_STORE=str(tmp_path / "new-store")),
    )
    assert fine.returncode == 0, fine.stderr
    assert not (tmp_path / "new-store").exists()  # checking created nothing


def test_a_relative_store_is_under_base_dir_whatever_the_current_directory(
    tmp_path: Path,
) -> None:
    base = tmp_path / "project"
    base.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(tmp_path, TEST_BASE_DIR=str(base), TEST_BACKRUN_STORE="var/jobs")
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLE), env["PYTHONPATH"]])
    worker = Proc(
        [sys.executable, str(EXAMPLE / "manage.py"), "backrun_worker"], cwd=elsewhere, env=env
    )
    try:
        line = worker.wait_for(r"store: ")
        worker.wait_for("ready: waiting for jobs")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    finally:
        worker.kill()
    assert line.strip() == f"store:       JsonFileStorage ({base / 'var' / 'jobs'})"
    assert (base / "var" / "jobs").is_dir()
    assert not (elsewhere / "var").exists()


def test_worker_without_the_otel_extra_says_what_to_install_and_runs(tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        TEST_BACKRUN_STORE=str(tmp_path / "store"),
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
    )
    worker = Proc([sys.executable, "-c", NO_EXTRA, "backrun_worker"], cwd=EXAMPLE, env=env)
    try:
        worker.wait_for("ready: waiting for jobs")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    finally:
        worker.kill()
    assert "Traceback" not in worker.output
    hints = [line for line in worker.lines if "pip install 'backrun[otel]'" in line]
    assert len(hints) == 1, worker.output
    assert re.search(r"WARNING backrun\.cli: OTEL_EXPORTER_OTLP_ENDPOINT is set", hints[0])
