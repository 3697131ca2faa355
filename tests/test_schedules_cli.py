"""``backrun schedules``: next run in the schedule's zone, the last tick's job and its state."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import backrun
from backrun.cli import main
from backrun.scheduler import Scheduler
from backrun.testing import FakeClock

APP = """
import backrun

engine = backrun.Engine(backrun.JsonFileStorage({store!r}, fsync=False), middleware=[])

@engine.handler(name="cleanup")
def cleanup(payload: dict) -> None:
    pass

engine.schedule("cleanup", cron="30 2 * * *", tz="Europe/Paris", name="nightly-cleanup")
engine.schedule("cleanup", every=90, name="often", misfire="skip")
"""


def run_cli(engine: backrun.Engine, *args: str) -> str:
    out = io.StringIO()
    real = sys.stdout
    sys.stdout = out
    try:
        assert main(["schedules", *args], engine=engine) == 0
    finally:
        sys.stdout = real
    return out.getvalue()


@pytest.fixture
def engine() -> backrun.Engine:
    clock = FakeClock(datetime(2030, 5, 14, 23, 0, tzinfo=UTC))
    engine = backrun.Engine(backrun.MemoryStorage(), clock=clock, middleware=[])

    @engine.handler(name="cleanup")
    def cleanup(payload: dict[str, int]) -> None:
        return None

    return engine


def test_json_lists_next_run_in_the_zone_and_the_last_ticks_job_state(
    engine: backrun.Engine,
) -> None:
    s = engine.schedule("cleanup", cron="30 2 * * *", tz="Europe/Paris", name="nightly")
    before = json.loads(run_cli(engine, "--json"))["schedules"]
    assert before == [
        {
            "name": "nightly",
            "handler": "cleanup",
            "spec": "30 2 * * *",
            "tz": "Europe/Paris",
            "misfire": "once",
            "queue": None,
            "next_run_at": "2030-05-15T02:30:00+02:00",
            "last_tick_at": None,
            "last_job_id": None,
            "last_job_state": None,
        }
    ]
    clock = engine.clock
    assert isinstance(clock, FakeClock)
    clock.advance(timedelta(hours=1, minutes=30))  # 02:30 Paris
    Scheduler(engine, "test").run_once()
    (after,) = json.loads(run_cli(engine, "--json"))["schedules"]
    tick = datetime(2030, 5, 15, 0, 30, tzinfo=UTC)
    assert after["last_tick_at"] == "2030-05-15T02:30:00+02:00"
    assert after["last_job_id"] == s.tick_id(tick)
    assert after["last_job_state"] == "queued"
    assert after["next_run_at"] == "2030-05-16T02:30:00+02:00"
    engine.run_until_idle()
    (done,) = json.loads(run_cli(engine, "--json"))["schedules"]
    assert done["last_job_state"] == "succeeded"


def test_table_output(engine: backrun.Engine) -> None:
    assert "no schedules" in run_cli(engine)
    engine.schedule("cleanup", every=timedelta(minutes=5), name="five")
    text = run_cli(engine)
    header, row = text.strip().splitlines()
    assert header.split()[:4] == ["NAME", "HANDLER", "SCHEDULE", "TZ"]
    assert row.split()[:5] == ["five", "cleanup", "every", "300s", "UTC"]
    assert "never" in row


def test_the_command_loads_the_app_in_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "sched_app.py").write_text(APP.format(store=str(tmp_path / "store")))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "backrun", "schedules", "--app", "sched_app:engine", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    names = [s["name"] for s in json.loads(result.stdout)["schedules"]]
    assert names == ["nightly-cleanup", "often"]
    assert json.loads(result.stdout)["schedules"][0]["next_run_at"].endswith(("+01:00", "+02:00"))
