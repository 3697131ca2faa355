"""Every operation of the JSON store, crashed at each of its file-system calls in turn.

The Hypothesis model explores sequences; this walks every crash point of every
single operation exhaustively. After each crash a new store opens the
directory (the dead one's locks released, as the kernel would) and runs
``maintain``: the job must then be in exactly one file, in its before- or its
after-state, with nothing corrupt, grabbed or left in ``tmp/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backrun.jobs import Job, JobState
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage
from backrun.storage.jsonfile.layout import parse_ready, parse_running

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)
JOB_ID = f"{7:032x}"


def new_job(**changes: object) -> Job:
    fields: dict[str, object] = {
        "id": JOB_ID,
        "handler": "h",
        "payload": {"x": 1},
        "run_at": T0,
        "created_at": T0,
    }
    fields.update(changes)
    return Job(**fields)  # type: ignore[arg-type]


def claim(store: JsonFileStorage) -> Job:
    (job,) = store.claim(queues=None, limit=1, now=T0, worker_id="w0", lease=LEASE)
    return job


Setup = Callable[[JsonFileStorage], Job | None]
Act = Callable[[JsonFileStorage, Job | None], object]


def _waiting(store: JsonFileStorage) -> Job | None:
    store.add(new_job())
    return None


def _running(store: JsonFileStorage) -> Job | None:
    store.add(new_job())
    return claim(store)


def _dead(store: JsonFileStorage) -> Job | None:
    store.add(new_job())
    store.update(claim(store).replace(state=JobState.DEAD, finished_at=T0))
    return None


def _far(store: JsonFileStorage) -> Job | None:
    store.add(new_job(run_at=T0 + timedelta(days=3), state=JobState.SCHEDULED))
    return None


def _orphan(store: JsonFileStorage) -> Job | None:
    store.add(new_job())
    claim(store)
    (orphan,) = store.orphans(now=T0)  # w0 never registered: its jobs are orphans
    return orphan


def _held(job: Job | None) -> Job:
    assert job is not None
    return job


CASES: dict[str, tuple[Setup, Act, set[str]]] = {
    "add": (lambda s: None, lambda s, j: s.add(new_job()), {"absent", "queued"}),
    "add_many": (
        lambda s: None,
        lambda s, j: s.add_many([new_job()]),
        {"absent", "queued"},
    ),
    "claim": (_waiting, lambda s, j: claim(s), {"queued", "running"}),
    "complete": (
        _running,
        lambda s, j: s.update(_held(j).replace(state=JobState.SUCCEEDED, finished_at=T0)),
        {"running", "succeeded"},
    ),
    "complete-by-rename": (
        _running,
        lambda s, j: s.update(
            _held(j).replace(state=JobState.SUCCEEDED, finished_at=T0, lease_expires_at=None)
        ),
        {"running", "succeeded"},
    ),
    "retry": (
        _running,
        lambda s, j: s.update(
            _held(j).replace(state=JobState.SCHEDULED, run_at=T0 + timedelta(seconds=5))
        ),
        {"running", "scheduled"},
    ),
    "release": (
        _running,
        lambda s, j: s.update(_held(j).replace(state=JobState.QUEUED)),
        {"running", "queued"},
    ),
    "renew": (
        _running,
        lambda s, j: s.update(_held(j).replace(lease_expires_at=T0 + timedelta(hours=1))),
        {"running"},
    ),
    "rescue": (
        _orphan,
        lambda s, j: s.update(_held(j).replace(state=JobState.QUEUED)),
        {"running", "queued"},
    ),
    "cancel-waiting": (_waiting, lambda s, j: s.cancel(JOB_ID, now=T0), {"queued", "cancelled"}),
    "cancel-far": (_far, lambda s, j: s.cancel(JOB_ID, now=T0), {"scheduled", "cancelled"}),
    "cancel-running": (_running, lambda s, j: s.cancel(JOB_ID, now=T0), {"running"}),
    "requeue-dead": (_dead, lambda s, j: s.requeue(JOB_ID, now=T0), {"dead", "queued"}),
    "requeue-far": (_far, lambda s, j: s.requeue(JOB_ID, now=T0), {"scheduled", "queued"}),
    "heartbeat": (
        _running,
        lambda s, j: s.heartbeat([_held(j)], worker_id="w0", now=T0, lease_until=T0 + LEASE),
        {"running"},
    ),
    "purge": (_dead, lambda s, j: s.purge(before=T0 + timedelta(days=1)), {"dead", "absent"}),
}


def copies(root: Path) -> list[str]:
    """Every job file in the store, by job id."""
    ids = []
    for path in (root / "q").rglob("*"):
        if path.is_file():
            parsed = parse_ready(path.name)
            ids.append(parsed.job_id if parsed is not None else path.name[:32])
    for name in os.listdir(root / "running"):
        running = parse_running(name)
        assert running is not None, name
        ids.append(running.job_id)
    return ids


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("durable", [False, True], ids=["nosync", "fsync"])
def test_a_crash_at_any_call_leaves_the_before_or_the_after_state(
    tmp_path: Path, case: str, durable: bool
) -> None:
    setup, act, allowed = CASES[case]
    crashes = 0
    for crash_at in range(1, 60):
        root = tmp_path / f"{crash_at}"
        store = JsonFileStorage(root, fsync=durable)
        held = setup(store)
        faults = fs.Faults(crash_at)
        try:
            with faults.installed():
                act(store, held)
                store.flusher.wait(timeout=10)  # a completion's flush: numbered calls too
        except fs.SimulatedCrash:
            crashes += 1
        store.ctx.locks.release_all()  # the process is gone
        if not faults.fired:
            break
        healer = JsonFileStorage(root, fsync=durable, tmp_grace=timedelta(0))
        healer.maintain(now=T0)
        stored = healer.get(JOB_ID)
        state = "absent" if stored is None else stored.state.value
        assert state in allowed, (crash_at, faults.log[-1], state)
        assert copies(root) == ([] if stored is None else [JOB_ID]), crash_at
        assert os.listdir(root / "corrupt") == []
        assert os.listdir(root / "tmp") == []
        assert not list(root.rglob("*.grab"))
        healer.close()
    else:
        pytest.fail("the operation never completed")
    assert crashes >= 1
