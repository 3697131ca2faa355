"""The JSON store under a real engine: the default store, unknown handlers, I/O faults."""

from __future__ import annotations

import errno
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel

import backrun
from backrun.jobs import Job, JobState, new_job_id
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage
from backrun.testing import wait_until


class Note(BaseModel):
    text: str


def test_engine_without_a_store_uses_json_files_in_backrun_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKRUN_DIR", str(tmp_path / "jobs"))
    engine = backrun.Engine(middleware=[])
    try:
        assert isinstance(engine.storage, JsonFileStorage)
        assert Path(engine.storage.path) == tmp_path / "jobs"
    finally:
        engine.close()


def test_a_job_naming_an_unregistered_handler_goes_dead_and_imports_nothing(
    tmp_path: Path,
) -> None:
    store = JsonFileStorage(tmp_path / "store", fsync=False)
    engine = backrun.Engine(store, middleware=[])
    ran: list[str] = []

    @engine.handler(name="note")
    def note(payload: Note) -> None:
        ran.append(payload.text)

    now = datetime.now(UTC)
    planted = Job(
        id=new_job_id(),
        handler="backrun_evil_module.payload:run",
        payload={"cmd": "rm -rf /"},
        run_at=now,
        created_at=now,
    )
    store.add(planted)
    engine.enqueue(note, {"text": "hi"})
    engine.run_until_idle(timeout=10)
    dead = store.get(planted.id)
    assert dead is not None
    assert dead.state is JobState.DEAD
    assert dead.last_error is not None
    assert dead.last_error.type.endswith("UnknownHandler")
    assert "backrun_evil_module" not in sys.modules
    assert ran == ["hi"]
    engine.close()


def test_the_worker_logs_io_errors_keeps_running_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = JsonFileStorage(tmp_path / "store", fsync=True)
    engine = backrun.Engine(store, middleware=[], recovery_interval=0.1)
    ran: list[str] = []

    @engine.handler(name="note")
    def note(payload: Note) -> None:
        ran.append(payload.text)

    job = engine.enqueue(note, {"text": "after the disk came back"})
    faults = fs.Faults(1, error=errno.EIO, operations=["rename", "link"], repeat=True)
    with caplog.at_level(logging.ERROR), faults.installed(), engine.running():
        wait_until(lambda: faults.fired >= 2, timeout=10, message="failing claims")
        with pytest.raises(backrun.StorageError):
            engine.enqueue(note, {"text": "x"}, at=datetime(2031, 1, 1, tzinfo=UTC))
        faults.clear()
        wait_until(
            lambda: (store.get(job.id) or job).state is JobState.SUCCEEDED,
            timeout=10,
            message="job done once the fault cleared",
        )
    assert ran == ["after the disk came back"]
    assert any("claim failed" in r.getMessage() for r in caplog.records)
    engine.close()
