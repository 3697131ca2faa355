"""A process recording a success with follow-ups dies at each file-system call in turn.

The child process adds a parent with two follow-ups, claims it, and records
its success with a fault hook that ends the process with ``os._exit`` (no
cleanup, no ``finally``, locks released by the kernel: as SIGKILL) at call
number N. For every N, once another store has healed the directory, either
the parent is SUCCEEDED with each follow-up there exactly once, or it is
RUNNING (an orphan, to be re-run) with each follow-up there at most once; and
re-running it leaves each follow-up exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.storage.test_jsonfile_followup_crashpoints import CHILDREN, heal_and_check

pytestmark = pytest.mark.slow

CHILD = """
import sys
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage
from tests.helpers import make_job
from tests.storage import test_jsonfile_followup_crashpoints as points

root, crash_at = sys.argv[1], int(sys.argv[2])
points.CHILDREN[:] = sys.argv[3:]
store = JsonFileStorage(root, fsync=True)
store.add(make_job(id=points.PARENT, handler="parent", followups=points.followups()))
job = points.claim(store)
with fs.Faults(crash_at, exit_code=137).installed():
    points.succeed(store, job)
print("completed", flush=True)
"""


def record_success(root: Path, crash_at: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(crash_at), *CHILDREN],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=False,
    )


def test_a_killed_success_step_never_loses_or_doubles_a_followup(tmp_path: Path) -> None:
    outcomes: Counter[str] = Counter()
    for crash_at in range(1, 200):
        root = tmp_path / f"{crash_at}"
        done = record_success(root, crash_at)
        if done.returncode == 0:
            assert "completed" in done.stdout
            break
        assert done.returncode == 137, done.stderr
        outcomes[heal_and_check(root, True, crash_at)] += 1
    else:
        raise AssertionError("the success step never completed")
    assert outcomes["running"] >= 3, outcomes
    assert outcomes["succeeded"] >= 1, outcomes
