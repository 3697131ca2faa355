"""The JSON store's success step with follow-ups, crashed at each of its file-system calls.

The follow-ups are written before the parent's success is published, under
the ids fixed at the parent's enqueue. Whatever call a crash stops at, once
a new store has healed the directory: either the parent is SUCCEEDED and each
follow-up exists exactly once, or the parent is RUNNING again (it will be
rescued and re-run) and each follow-up exists at most once; and re-running
the parent then leaves each follow-up exactly once. Never a SUCCEEDED parent
with a follow-up missing.

A crash is :class:`~backrun.storage.fs.SimulatedCrash` raised at the call
(the store's code stops there, as under SIGKILL); ``exit_code`` faults in a
real subprocess are exercised by ``tests/crash``.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from backrun.jobs import Job, JobState, new_job_id
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage
from tests.helpers import LEASE, T0, make_job
from tests.storage.test_jsonfile_crashpoints import copies

PARENT = f"{7:032x}"
CHILDREN = [new_job_id(), new_job_id()]


def followups() -> tuple[dict[str, object], ...]:
    return tuple(
        {
            "id": child,
            "handler": "next",
            "payload": {"i": i},
            "queue": "default" if i == 0 else "later",
            "priority": 0,
            "delay": 0.0 if i == 0 else 3600.0,
            "max_attempts": 3,
            "headers": {},
            "version": 1,
        }
        for i, child in enumerate(CHILDREN)
    )


def claim(store: JsonFileStorage, worker: str = "w0") -> Job:
    (job,) = store.claim(queues=["default"], limit=1, now=T0, worker_id=worker, lease=LEASE)
    return job


def succeed(store: JsonFileStorage, job: Job) -> None:
    store.update(job.replace(state=JobState.SUCCEEDED, finished_at=T0, result={"ok": True}))


def check_consistent(root: Path, store: JsonFileStorage) -> str:
    counts = Counter(copies(root))
    parent = store.get(PARENT)
    assert parent is not None
    assert counts[PARENT] == 1
    assert all(counts[child] <= 1 for child in CHILDREN), counts
    if parent.state is JobState.SUCCEEDED:
        assert all(counts[child] == 1 for child in CHILDREN), counts
        assert parent.result == {"ok": True}
    else:
        assert parent.state is JobState.RUNNING
    assert os.listdir(root / "corrupt") == []
    assert os.listdir(root / "tmp") == []
    assert not list(root.rglob("*.grab"))
    return parent.state.value


def heal_and_check(root: Path, durable: bool, crash_at: int) -> str:
    """Open the crashed store as the next process would, check it, finish the parent.

    Returns the parent's state as the crash left it. A RUNNING parent is an
    orphan (its worker is gone): rescued, claimed and run again. Either way
    its first follow-up is then due exactly once.
    """
    healer = JsonFileStorage(root, fsync=durable, tmp_grace=timedelta(0))
    healer.maintain(now=T0)
    state = check_consistent(root, healer)
    if state == "running":
        (orphan,) = healer.orphans(now=T0)
        healer.update(orphan.replace(state=JobState.QUEUED, attempts=orphan.attempts - 1))
        succeed(healer, claim(healer, "w1"))
        assert check_consistent(root, healer) == "succeeded", crash_at
    due = healer.claim(queues=None, limit=10, now=T0, worker_id="w2", lease=LEASE)
    assert [j.id for j in due] == [CHILDREN[0]], crash_at
    healer.close()
    return state


@pytest.mark.parametrize("durable", [False, True], ids=["nosync", "fsync"])
def test_a_crash_in_the_success_step_never_loses_or_doubles_a_followup(
    tmp_path: Path, durable: bool
) -> None:
    outcomes: Counter[str] = Counter()
    for crash_at in range(1, 200):
        root = tmp_path / f"{crash_at}"
        store = JsonFileStorage(root, fsync=durable)
        store.add(make_job(id=PARENT, handler="parent", followups=followups()))
        job = claim(store)
        faults = fs.Faults(crash_at)
        try:
            with faults.installed():
                succeed(store, job)
        except fs.SimulatedCrash:
            pass
        store.ctx.locks.release_all()  # the process is gone
        if not faults.fired:
            break
        outcomes[heal_and_check(root, durable, crash_at)] += 1
    else:
        pytest.fail("the success step never completed")
    # Both sides of the publishing rename were reached.
    assert outcomes["running"] >= 3, outcomes
    assert outcomes["succeeded"] >= 1, outcomes
