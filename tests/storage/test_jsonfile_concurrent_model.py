"""Hypothesis searches the interleavings of several threads of one process on one JSON store.

Worker threads claim, fail and retry with zero backoff, or finish; a rescuer
claims as a dead worker and rescues its own orphan at once (re-run at once);
a reader calls ``get`` throughout. Every file-system call of a thread is a
switch point: a cooperative scheduler lets exactly one thread run at a time,
and Hypothesis chooses which one runs after each call, so the search covers
the orderings of grab, publish, drop and claim steps between threads (the
class of race that stranded jobs RUNNING under a live worker, issue 10 item 1)
and not just the ones the OS scheduler happens to produce.

Checked: no owner's write is refused as a lost claim, no job stays RUNNING
once every thread is done, each job is in exactly one file, a job that
failed three times is DEAD, and ``get`` never returns ``None`` for a job.

Profiles as in ``test_jsonfile_model``: ``BACKRUN_HYPOTHESIS_PROFILE=long``
runs ten times the examples.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backrun.errors import LeaseLost
from backrun.jobs import Job, JobState
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage, window
from tests.storage.test_jsonfile_crashpoints import copies

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(minutes=5)
MAX_ATTEMPTS = 3
SWITCH_TIMEOUT_S = 20.0


class Aborted(BaseException):
    """Unwinds a parked thread when its example ends early (Hypothesis stopped drawing)."""


class Scheduler:
    """Runs one thread at a time; after each of a thread's fs calls, ``choose`` picks the next."""

    def __init__(self, store: JsonFileStorage, choose: Callable[[int], int]) -> None:
        self._store = store
        self._choose = choose
        self._cond = threading.Condition()
        self._local = threading.local()
        self._current: int | None = None
        self._parked: set[int] = set()
        self._done: set[int] = set()
        self._count = 0
        self._aborted = False
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def spawn(self, program: Callable[[], None]) -> None:
        index = self._count
        self._count += 1

        def run() -> None:
            self._local.index = index
            try:
                self._park(index)
                program()
            except Aborted:
                pass
            except BaseException as exc:
                self.errors.append(exc)
            finally:
                with self._cond:
                    self._done.add(index)
                    self._current = None
                    self._cond.notify_all()

        thread = threading.Thread(target=run, daemon=True)
        self._threads.append(thread)
        thread.start()

    def hook(self, operation: str, path: str) -> None:
        index = getattr(self._local, "index", None)
        # Never switch while holding the store's lock: the next thread would wait on it.
        if index is None or self._store.ctx.mutex._is_owned():  # type: ignore[attr-defined]
            return
        self._park(index)

    def _park(self, index: int) -> None:
        with self._cond:
            self._parked.add(index)
            if self._current == index:
                self._current = None
            self._cond.notify_all()
            resumed = self._cond.wait_for(
                lambda: self._current == index or self._aborted, SWITCH_TIMEOUT_S
            )
            self._parked.discard(index)
            if self._aborted:
                raise Aborted
            if not resumed:
                raise AssertionError(f"thread {index} was never resumed")

    def abort(self) -> None:
        """Unwind every thread still parked and wait for all of them to end."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(SWITCH_TIMEOUT_S)

    def run(self) -> None:
        """Resume parked threads, as ``choose`` says, until every thread is done."""
        last = 0
        while True:
            with self._cond:
                settled = self._cond.wait_for(
                    lambda: (
                        self._current is None and len(self._parked) + len(self._done) == self._count
                    ),
                    SWITCH_TIMEOUT_S,
                )
                assert settled, "a thread blocked outside the scheduler (deadlock)"
                if len(self._done) == self._count:
                    return
                # Index 0 keeps the last thread running; Hypothesis shrinks towards it.
                parked = sorted(self._parked)
                ring = sorted(parked, key=lambda i: (i < last, i))
                last = ring[self._choose(len(ring))]
                self._current = last
                self._cond.notify_all()


def new_job(n: int) -> Job:
    return Job(id=f"{n:032x}", handler="h", payload={"n": n}, run_at=T0, created_at=T0)


def outcome_record(job: Job, fails: bool) -> Job:
    if not fails:  # odd ids succeed by one rename (no lease left: a plain success)
        lease = None if int(job.id, 16) % 2 else job.lease_expires_at
        return job.replace(state=JobState.SUCCEEDED, finished_at=T0, lease_expires_at=lease)
    if job.attempts >= MAX_ATTEMPTS:
        return job.replace(state=JobState.DEAD, finished_at=T0)
    return job.replace(state=JobState.SCHEDULED, run_at=T0)  # retry, zero backoff


@settings(
    max_examples=100 if os.environ.get("BACKRUN_HYPOTHESIS_PROFILE", "ci") == "ci" else 1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=st.data(),
    jobs=st.integers(1, 3),
    workers=st.integers(2, 3),
    rescuer=st.booleans(),
    reader=st.booleans(),
    fails=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_threads_claiming_retrying_and_finishing_never_strand_or_hide_a_job(
    data: st.DataObject,
    jobs: int,
    workers: int,
    rescuer: bool,
    reader: bool,
    fails: list[bool],
) -> None:
    root = tempfile.mkdtemp(prefix="backrun-threads-")
    store = JsonFileStorage(root, fsync=False)
    tuning = pin_timing()
    try:
        store.register_worker("w", now=T0)
        store.ctx.ensure_session()
        store.ctx.ensure_queue("default")
        ids = [new_job(n).id for n in range(1, jobs + 1)]
        store.add_many([new_job(n) for n in range(1, jobs + 1)])
        lost: list[str] = []
        vanished: list[str] = []
        outcomes = iter(fails * 4)

        def choose(count: int) -> int:
            return data.draw(st.integers(0, count - 1)) if count > 1 else 0

        scheduler = Scheduler(store, choose)

        def work() -> None:
            idle = 0
            while idle < 3:
                claimed = store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE)
                if not claimed:
                    idle += 1
                    continue
                idle = 0
                (job,) = claimed
                try:
                    store.update(outcome_record(job, next(outcomes, True)))
                except LeaseLost as exc:
                    lost.append(f"{job.id}: {exc}")

        def rescue_at_once() -> None:
            claimed = store.claim(queues=None, limit=1, now=T0, worker_id="ghost", lease=LEASE)
            for orphan in store.orphans(now=T0):  # "ghost" holds no lock: its claims are orphans
                rescued = orphan.replace(state=JobState.QUEUED, lease_expires_at=None)
                try:
                    store.update(rescued)
                except LeaseLost as exc:
                    lost.append(f"{orphan.id} (rescue): {exc}")
            assert len(claimed) <= 1

        def read() -> None:
            for _ in range(4):
                for job_id in ids:
                    if store.get(job_id) is None:
                        vanished.append(job_id)

        for _ in range(workers):
            scheduler.spawn(work)
        if rescuer:
            scheduler.spawn(rescue_at_once)
        if reader:
            scheduler.spawn(read)
        previous = fs.set_hook(scheduler.hook)
        try:
            scheduler.run()
        finally:
            scheduler.abort()  # a no-op unless the example stopped early
            fs.set_hook(previous)
        assert scheduler.errors == []
        assert lost == []
        assert vanished == []
        # A rescue that ran after the workers gave up leaves the job waiting: finish it.
        while claimed := store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE):
            store.update(outcome_record(claimed[0], True))
        final = {job_id: store.get(job_id) for job_id in ids}
        for job_id, job in final.items():
            assert job is not None, job_id
            assert job.state in (JobState.SUCCEEDED, JobState.DEAD), (job_id, job.state)
            if job.state is JobState.DEAD:
                assert job.attempts >= MAX_ATTEMPTS
        assert sorted(copies(Path(root))) == sorted(ids)
        assert not list(Path(root).rglob("*.grab"))
        assert os.listdir(Path(root) / "running") == []
    finally:
        restore_timing(tuning)
        store.close()
        shutil.rmtree(root, ignore_errors=True)


def pin_timing() -> tuple[int, float, float, float]:
    """Make the store's calls independent of time, so one choice sequence replays exactly."""
    tuning = (
        window.RACY_NS,
        window.RELIST_MIN_S,
        window.RELIST_COST_FACTOR,
        window.RECHECK_S,
    )
    window.RACY_NS = 10**30
    window.RELIST_MIN_S = window.RELIST_COST_FACTOR = 0
    window.RECHECK_S = 0
    return tuning


def restore_timing(tuning: tuple[int, float, float, float]) -> None:
    (
        window.RACY_NS,
        window.RELIST_MIN_S,
        window.RELIST_COST_FACTOR,
        window.RECHECK_S,
    ) = tuning
