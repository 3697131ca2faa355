"""``backrun worker --processes N``: real parents and children, signals, crashes and caps."""

from __future__ import annotations

import collections
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from backrun.engine import Engine
from backrun.jobs import WORKER_CRASHED, WORKER_CRASHED_UNCHARGED, JobState
from tests.cli.conftest import APPS, load_app, one_error_line
from tests.cli.procs import Proc
from tests.cli.procs import backrun as run_backrun
from tests.helpers import wait_until


@pytest.fixture
def procapp(store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The --processes test app, imported here on the test's store (to enqueue and inspect)."""
    module = load_app("procapp", store, monkeypatch)
    yield module
    module.engine.close()


def worker(app_env: dict[str, str], *options: str) -> Proc:
    args = [sys.executable, "-m", "backrun", "worker", "procapp:engine", *options]
    return Proc(args, cwd=APPS, env=app_env)


def runs(store: Path) -> list[tuple[str, int]]:
    """``(job id, pid)`` of every attempt the app's handlers began, in order."""
    log = store.parent / "runs.log"
    if not log.exists():
        return []
    # A line being written now may be read half: take only whole lines.
    pairs = (line.split() for line in log.read_text().split("\n")[:-1])
    return [(job_id, int(pid)) for job_id, pid in pairs]


def states(app: ModuleType, ids: list[str]) -> collections.Counter[str]:
    return collections.Counter(app.engine.get(i).state.value for i in ids)


def test_sigterm_drains_every_child_and_exits_0(
    procapp: ModuleType, app_env: dict[str, str], store: Path
) -> None:
    held = [procapp.engine.enqueue("record", {"n": 99}).id for _ in range(2)]
    parent = worker(app_env, "--processes", "2", "--threads", "1")
    try:
        parent.wait_for(r"supervisor pid \d+ starting 2 worker process")
        assert "  processes:   2 x 1 threads (2 jobs at once)" in parent.output
        wait_until(lambda: len(runs(store)) == 2, timeout=20, what="both held jobs to start")
        pids = {pid for _, pid in runs(store)}
        # One job in each child (one thread each), none in the parent.
        assert len(pids) == 2
        assert parent.popen.pid not in pids
        parent.signal(signal.SIGTERM)
        parent.wait_for(r"SIGTERM received: draining 2 child process\(es\)")
        (store.parent / "go").touch()
        assert parent.wait() == 0, parent.output
    finally:
        parent.kill()
    assert states(procapp, held) == {"succeeded": 2}
    assert "stopped cleanly (0 child restart(s))" in parent.output


def test_second_sigint_forces_children_to_release_jobs_without_charging(
    procapp: ModuleType, app_env: dict[str, str], store: Path
) -> None:
    held = [procapp.engine.enqueue("record", {"n": 99}).id for _ in range(2)]
    parent = worker(app_env, "--processes", "2", "--threads", "1")
    try:
        wait_until(lambda: len(runs(store)) == 2, timeout=20, what="both held jobs to start")
        parent.signal(signal.SIGINT)
        parent.wait_for(r"SIGINT received: draining 2")
        parent.signal(signal.SIGINT)
        parent.wait_for(r"SIGINT again: forcing 2 child process\(es\) to release jobs")
        assert parent.wait() == 1, parent.output
    finally:
        parent.kill()
    assert "running jobs were released to the queue" in parent.output
    for job_id in held:
        job = procapp.engine.get(job_id)
        assert (job.state.value, job.attempts) == ("queued", 0)


def test_a_child_killed_by_its_job_is_replaced_and_the_others_keep_running(
    procapp: ModuleType, app_env: dict[str, str], store: Path
) -> None:
    engine = procapp.engine
    innocent = [engine.enqueue("record", {"n": i}).id for i in range(10)]
    poison = engine.enqueue("poison", {"n": 0}).id
    innocent += [engine.enqueue("record", {"n": i}).id for i in range(10, 20)]
    # One thread per child: the poison job always runs alone. Its first crash is
    # not charged (nothing had marked it to run alone yet); every later one is.
    parent = worker(app_env, "--processes", "2", "--threads", "1")
    try:
        wait_until(
            lambda: (
                engine.get(poison).state is JobState.DEAD
                and states(procapp, innocent) == {"succeeded": 20}
            ),
            timeout=25,
            what="the poison job to go dead and the others to succeed",
        )
        assert parent.popen.poll() is None  # the worker as a whole never stopped
        parent.wait_for(r"child \d \(pid \d+\) died \(killed by SIGKILL\) after .*restarting it")

        def every_poisoned_child_was_replaced() -> bool:
            # Each crash was recovered from a worker "<host>-<pid>-..."; the parent
            # must have reaped and replaced every one of them before it is stopped.
            output = parent.output
            dead = re.findall(
                rf"recovered job {poison} from dead worker \S*-(\d+)-[0-9a-f]{{8}}\b", output
            )
            return bool(dead) and all(
                re.search(rf"child \d \(pid {pid}\) died \(killed by SIGKILL\)", output)
                for pid in dead
            )

        wait_until(every_poisoned_child_was_replaced, what="every crashed child to be replaced")
        # Replacements start and are ready again: more work is still taken.
        late = engine.enqueue("record", {"n": 7}).id
        wait_until(lambda: engine.get(late).state is JobState.SUCCEEDED, what="a later job")
        parent.signal(signal.SIGTERM)
        assert parent.wait() == 0, parent.output
    finally:
        parent.kill()
    dead = engine.get(poison)
    errors = [e.type for e in dead.errors]
    assert errors == [WORKER_CRASHED_UNCHARGED] + [WORKER_CRASHED] * engine.max_crashes
    assert dead.attempts == engine.max_crashes == 2  # not max_attempts (6): the crash rule
    ran = collections.Counter(job_id for job_id, _ in runs(store))
    assert ran[poison] == 3
    assert all(ran[job_id] == 1 for job_id in innocent)
    assert parent.output.count("died (killed by SIGKILL)") == 3


def test_poison_job_among_neighbours_goes_dead_and_the_neighbours_succeed(
    procapp: ModuleType, app_env: dict[str, str], store: Path
) -> None:
    engine = procapp.engine
    jobs = [engine.enqueue("record", {"n": i}).id for i in range(6)]
    poison = engine.enqueue("poison", {"n": 0}).id
    jobs += [engine.enqueue("record", {"n": i}).id for i in range(6, 12)]
    parent = worker(app_env, "--processes", "2", "--threads", "3")
    try:
        wait_until(
            lambda: (
                engine.get(poison).state is JobState.DEAD
                and states(procapp, jobs) == {"succeeded": 12}
            ),
            timeout=25,
            what="the poison job to go dead and its neighbours to succeed",
        )
        assert parent.popen.poll() is None
        parent.signal(signal.SIGTERM)
        assert parent.wait() == 0, parent.output
    finally:
        parent.kill()
    dead = engine.get(poison)
    assert [e.type for e in dead.errors].count(WORKER_CRASHED) >= engine.max_crashes


def test_max_jobs_per_child_replaces_children_and_loses_nothing(
    procapp: ModuleType, app_env: dict[str, str], store: Path
) -> None:
    engine = procapp.engine
    ids = [job.id for job in engine.enqueue_many("record", [{"n": 1000 + i} for i in range(500)])]
    parent = worker(app_env, "--processes", "2", "--threads", "2", "--max-jobs-per-child", "50")
    try:
        wait_until(
            lambda: len(runs(store)) >= 500 and states(procapp, ids) == {"succeeded": 500},
            timeout=60,
            what="all 500 jobs to succeed",
        )
        parent.signal(signal.SIGTERM)
        assert parent.wait() == 0, parent.output
    finally:
        parent.kill()
    ran = collections.Counter(job_id for job_id, _ in runs(store))
    assert sorted(ran) == sorted(ids)
    assert set(ran.values()) == {1}  # every job ran exactly once
    assert all(engine.get(i).attempts == 1 for i in ids)
    replaced = parent.output.count("is replaced: max-jobs")
    per_child = collections.Counter(pid for _, pid in runs(store))
    # 500 jobs at 50 (at most 51 with two threads) per child: about ten replacements.
    assert 8 <= replaced <= 10, parent.output
    assert replaced <= len(per_child) <= replaced + 2
    # A child stops claiming at its 50th job; its other thread may be running one more.
    assert max(per_child.values()) <= 52


def test_max_memory_per_child_replaces_a_child_and_says_why(
    procapp: ModuleType, app_env: dict[str, str], store: Path
) -> None:
    engine = procapp.engine
    ids = [engine.enqueue("record", {"n": i}).id for i in range(3)]
    # Every interpreter is over 1 MB: each child is replaced after its first job or second.
    parent = worker(app_env, "--processes", "1", "--threads", "1", "--max-memory-per-child", "1")
    try:
        wait_until(lambda: states(procapp, ids) == {"succeeded": 3}, timeout=25, what="3 jobs")
        parent.wait_for(r"is replaced: max-memory \d+ MB resident \(--max-memory-per-child 1\)")
        parent.signal(signal.SIGTERM)
        assert parent.wait() == 0, parent.output
    finally:
        parent.kill()
    assert set(collections.Counter(j for j, _ in runs(store)).values()) == {1}


def test_usage_errors_exit_2(app_env: dict[str, str]) -> None:
    for bad in (["--processes", "0"], ["--max-jobs-per-child", "x"], ["--threads", "-1"]):
        result = run_backrun("worker", "procapp:engine", *bad, cwd=APPS, env=app_env)
        assert result.returncode == 2, (bad, result.stderr)
        one_error_line(result)


def test_store_unavailable_exits_3_before_any_child_starts(tmp_path: Path) -> None:
    result = run_backrun(
        "worker", "unavailable:engine", "--processes", "2", cwd=APPS, env={"CLI_TEST_STORE": "x"}
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert one_error_line(result).startswith("error: store unavailable: ")
    assert "starting" not in result.stdout


def test_a_child_that_keeps_failing_at_start_backs_off_then_the_parent_exits_1(
    app_env: dict[str, str],
) -> None:
    parent = Proc(
        [sys.executable, "-m", "backrun", "worker", "badchild:engine", "--processes", "1"],
        cwd=APPS,
        env=app_env,
    )
    try:
        assert parent.wait(timeout=40) == 1, parent.output
    finally:
        parent.kill()
    out = parent.output
    for n, delay in enumerate(("0.5", "1", "2", "4"), start=1):
        assert f"exited before it was ready (exit code 2); restarting in {delay}s ({n}/5)" in out
    assert "failed to start 5 times in a row (last: exit code 2); giving up" in out
    assert "stopped: a child process kept failing at start" in out


def test_a_dead_childs_postgres_jobs_are_rescued_in_seconds_not_after_the_lease() -> None:
    from tests.storage.postgres_support import postgres_dsn, postgres_store

    store = postgres_store()
    engine = Engine(store, middleware=[], max_crashes=1)
    engine.add_handler(lambda payload: None, name="poison")
    engine.add_handler(lambda payload: None, name="fine")
    env = {"CLI_TEST_DSN": postgres_dsn(), "CLI_TEST_SCHEMA": store.schema}
    poison = engine.enqueue("poison", {"n": 1}).id
    parent = Proc(
        [sys.executable, "-m", "backrun", "worker", "pgapp:engine", "--processes", "2",
         "--threads", "1"],
        cwd=APPS,
        env=env,
    )  # fmt: skip
    try:
        # The lease is 60 s: only the parent unregistering the dead child's worker
        # makes its job an orphan for the surviving child within seconds.
        wait_until(
            lambda: engine.get(poison).state is JobState.DEAD,
            timeout=20,
            what="the dead child's job to be rescued",
        )
        fine = engine.enqueue("fine", {"n": 2}).id
        wait_until(lambda: engine.get(fine).state is JobState.SUCCEEDED, what="a later job")
        parent.signal(signal.SIGTERM)
        assert parent.wait() == 0, parent.output
    finally:
        parent.kill()
        engine.close()
    assert "died (killed by SIGKILL)" in parent.output


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie nobody reaped yet


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_children_drain_and_exit_when_the_parent_is_killed(
    procapp: ModuleType, app_env: dict[str, str], store: Path
) -> None:
    held = procapp.engine.enqueue("record", {"n": 99}).id
    parent = worker(app_env, "--processes", "2", "--threads", "1")
    try:
        wait_until(lambda: parent.output.count("ready: waiting for jobs") == 2, timeout=20)
        children = [
            int(p) for p in re.findall(r"worker \S+-(\d+)-[0-9a-f]{8} ready", parent.output)
        ]
        wait_until(lambda: len(runs(store)) == 1, what="the held job to start")
        parent.popen.kill()
        parent.wait()
        (store.parent / "go").touch()
        wait_until(lambda: all(_gone(pid) for pid in children), what="the children to exit")
    finally:
        parent.kill()
    # The child that held a job finished it before exiting: nothing left RUNNING.
    assert procapp.engine.get(held).state is JobState.SUCCEEDED
