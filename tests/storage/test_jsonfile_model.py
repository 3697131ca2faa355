"""A Hypothesis state machine: the JSON store against a plain Python model, crashing anywhere.

Every write rule may be given a crash point: the fault hook stops the
operation dead at that numbered file-system call, as a killed process would
stop. "Restart" then opens a new store on the same directory (the dead one's
locks are released, as the kernel releases a dead process's locks) and runs
``maintain``. A crashed operation was never acknowledged, so the model
accepts either its before- or its after-state, then adopts what the store
shows. Invariants checked after every step: each job is in exactly one file
(no grab or duplicate left), no partial or corrupt file ever appears, an
acknowledged job is never lost, a finished job is never claimed again, and the
store agrees with the model job by job.

Profiles: the CI default is 100 examples of 40 steps; set
``BACKRUN_HYPOTHESIS_PROFILE=long`` for 1,000 examples of 80 steps.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from backrun.errors import LeaseLost
from backrun.jobs import FINISHED_STATES, Job, JobState
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage, batch, window
from backrun.storage.jsonfile.layout import parse_ready, parse_running

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)
WAITING = "waiting"
RUNNING = "running"
ABSENT = "absent"

crash_points = st.one_of(
    st.just(0), st.integers(min_value=1, max_value=10), st.integers(min_value=1, max_value=30)
)
delays = st.sampled_from([0, 0, 5, 400, 3 * 86400])


@dataclass
class Entry:
    """The model of one job: its state and, while running, the claim."""

    state: str  # WAITING, RUNNING, or a finished JobState value
    run_at: datetime
    priority: int
    claim: Job | None = None
    owner: int | None = None  # the store generation that claimed it
    cancel_requested: bool = False
    finished_at: datetime | None = None
    possible: set[str] = field(default_factory=set)  # after a crash: what the store may show


def _kind(job: Job | None) -> str:
    if job is None:
        return ABSENT
    if job.state is JobState.RUNNING:
        return RUNNING
    if job.state in FINISHED_STATES:
        return job.state.value
    return WAITING


class JsonStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Same calls every run, so a crash point always hits the same step: never
        # trust a listing by time, never skip a re-listing by time.
        self._tuning = (
            window.RACY_NS,
            window.RELIST_MIN_S,
            window.RELIST_COST_FACTOR,
            window.RECHECK_S,
            batch._BATCH_THREADS,
        )
        batch._BATCH_THREADS = 1  # batch writes in one thread: calls in a fixed order
        window.RACY_NS = 10**30
        window.RELIST_MIN_S = window.RELIST_COST_FACTOR = 0
        window.RECHECK_S = 0
        self.root = tempfile.mkdtemp(prefix="backrun-model-")
        self.now = T0
        self.generation = 0
        self.store = self._open()
        self.jobs: dict[str, Entry] = {}
        self.next_id = 1

    # -- plumbing --------------------------------------------------------------

    def _open(self) -> JsonFileStorage:
        store = JsonFileStorage(
            self.root, fsync=self.generation % 2 == 0, retention=timedelta(days=3650)
        )
        store.register_worker(f"w{self.generation}", now=self.now)
        # Take the one-time steps now, so crash points land on the operations' own steps.
        store.ctx.ensure_session()
        store.ctx.ensure_queue("default")
        return store

    @property
    def worker(self) -> str:
        return f"w{self.generation}"

    def _crash_and_restart(self) -> None:
        """The process dies: its locks go, nothing else is cleaned up; a new one starts."""
        self.store.ctx.locks.release_all()
        self.generation += 1
        self.store = self._open()
        self.store.maintain(now=self.now)
        for job_id, entry in self.jobs.items():
            if entry.possible:
                self._adopt(job_id, entry)

    def _adopt(self, job_id: str, entry: Entry) -> None:
        stored = self.store.get(job_id)
        kind = _kind(stored)
        assert kind in entry.possible, (job_id, kind, entry.possible)
        entry.possible = set()
        entry.state = kind
        if stored is not None:
            assert stored.run_at is not None
            entry.run_at = stored.run_at
            entry.cancel_requested = stored.cancel_requested
            entry.finished_at = stored.finished_at
        if kind == RUNNING:
            entry.claim = stored
            entry.owner = -1  # claimed by a store that died
        else:
            entry.claim = entry.owner = None

    def _run(self, crash_at: int, action: object) -> bool:
        """Run ``action`` with a crash at call ``crash_at`` (0: none); True if it crashed."""
        assert callable(action)
        if crash_at == 0:
            action()
            return False
        try:
            with fs.Faults(crash_at).installed():
                action()
        except fs.SimulatedCrash:
            return True
        return False

    def _mine(self) -> list[str]:
        return sorted(
            i for i, e in self.jobs.items() if e.state == RUNNING and e.owner == self.generation
        )

    def teardown(self) -> None:
        (
            window.RACY_NS,
            window.RELIST_MIN_S,
            window.RELIST_COST_FACTOR,
            window.RECHECK_S,
            batch._BATCH_THREADS,
        ) = self._tuning
        self.store.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- rules -----------------------------------------------------------------

    @rule(delay=delays, priority=st.integers(0, 2), count=st.integers(1, 3), crash_at=crash_points)
    def enqueue(self, delay: int, priority: int, count: int, crash_at: int) -> None:
        run_at = self.now + timedelta(seconds=delay)
        state = JobState.SCHEDULED if delay else JobState.QUEUED
        batch = [
            Job(
                id=f"{self.next_id + n:032x}",
                handler="model.noop",
                payload={"i": len(self.jobs) + n},
                priority=priority,
                run_at=run_at,
                created_at=self.now,
                state=state,
            )
            for n in range(count)
        ]
        action = (
            (lambda: self.store.add(batch[0]))
            if count == 1
            else (lambda: self.store.add_many(batch))
        )
        self.next_id += count
        crashed = self._run(crash_at, action)
        for job in batch:
            self.jobs[job.id] = Entry(WAITING, run_at, priority)
            if crashed:
                self.jobs[job.id].possible = {WAITING, ABSENT}
        if crashed:
            self._crash_and_restart()
            for job in batch:
                if self.jobs[job.id].state == ABSENT:
                    del self.jobs[job.id]

    @rule(seconds=st.sampled_from([1, 10, 120, 600, 3 * 86400]))
    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(limit=st.integers(1, 3), crash_at=crash_points)
    def claim(self, limit: int, crash_at: int) -> None:
        due = sorted(
            (i for i, e in self.jobs.items() if e.state == WAITING and e.run_at <= self.now),
            key=lambda i: (-self.jobs[i].priority, self.jobs[i].run_at, i),
        )
        got: list[Job] = []

        def action() -> None:
            got.extend(
                self.store.claim(
                    queues=None, limit=limit, now=self.now, worker_id=self.worker, lease=LEASE
                )
            )

        if self._run(crash_at, action):
            for job_id in due:
                self.jobs[job_id].possible = {WAITING, RUNNING}
            self._crash_and_restart()
            return
        assert [j.id for j in got] == due[:limit]
        for job in got:
            entry = self.jobs[job.id]
            assert job.state is JobState.RUNNING
            assert job.worker_id == self.worker
            assert job.started_at == self.now
            entry.state, entry.claim, entry.owner = RUNNING, job, self.generation

    def _write(self, job_id: str, new: Job, crash_at: int, after: str) -> None:
        entry = self.jobs[job_id]
        if self._run(crash_at, lambda: self.store.update(new)):
            entry.possible = {RUNNING, after}
            self._crash_and_restart()
            return
        entry.state = after
        entry.finished_at = new.finished_at
        if after != RUNNING:
            entry.cancel_requested = new.cancel_requested
        entry.claim = new if after == RUNNING else None
        entry.owner = entry.owner if after == RUNNING else None
        assert new.run_at is not None
        entry.run_at = new.run_at

    @precondition(lambda self: self._mine())
    @rule(data=st.data(), by_rename=st.booleans(), crash_at=crash_points)
    def complete(self, data: st.DataObject, by_rename: bool, crash_at: int) -> None:
        job_id = data.draw(st.sampled_from(self._mine()))
        claim = self.jobs[job_id].claim
        assert claim is not None
        done = claim.replace(state=JobState.SUCCEEDED, finished_at=self.now)
        if by_rename:  # a plain success: recorded by one rename of the running file
            done = done.replace(lease_expires_at=None)
        self._write(job_id, done, crash_at, JobState.SUCCEEDED.value)

    @precondition(lambda self: self._mine())
    @rule(data=st.data(), retry=st.booleans(), crash_at=crash_points)
    def fail(self, data: st.DataObject, retry: bool, crash_at: int) -> None:
        job_id = data.draw(st.sampled_from(self._mine()))
        claim = self.jobs[job_id].claim
        assert claim is not None
        if retry:
            new = claim.replace(state=JobState.SCHEDULED, run_at=self.now + timedelta(seconds=10))
            self._write(job_id, new, crash_at, WAITING)
        else:
            new = claim.replace(state=JobState.DEAD, finished_at=self.now)
            self._write(job_id, new, crash_at, JobState.DEAD.value)

    @precondition(lambda self: self._mine())
    @rule(data=st.data(), crash_at=crash_points)
    def release(self, data: st.DataObject, crash_at: int) -> None:
        job_id = data.draw(st.sampled_from(self._mine()))
        claim = self.jobs[job_id].claim
        assert claim is not None
        new = claim.replace(state=JobState.QUEUED, attempts=claim.attempts - 1, run_at=self.now)
        self._write(job_id, new, crash_at, WAITING)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), crash_at=crash_points)
    def cancel(self, data: st.DataObject, crash_at: int) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        entry = self.jobs[job_id]
        result: list[Job] = []
        if self._run(crash_at, lambda: result.append(self.store.cancel(job_id, now=self.now))):
            entry.possible = (
                {entry.state, JobState.CANCELLED.value} if entry.state == WAITING else {entry.state}
            )
            self._crash_and_restart()
            return
        (job,) = result
        if entry.state == WAITING:
            assert job.state is JobState.CANCELLED
            entry.state = JobState.CANCELLED.value
            entry.finished_at = self.now
        elif entry.state == RUNNING:
            assert job.cancel_requested
            entry.cancel_requested = True
        else:
            assert job.state.value == entry.state

    @precondition(lambda self: self._mine())
    @rule()
    def heartbeat(self) -> None:
        mine = [self.jobs[i].claim for i in self._mine()]
        stop = self.store.heartbeat(
            [j for j in mine if j is not None],
            worker_id=self.worker,
            now=self.now,
            lease_until=self.now + LEASE,
        )
        assert stop == {i for i in self._mine() if self.jobs[i].cancel_requested}

    @rule(days=st.sampled_from([0, 1, 5]))
    def purge(self, days: int) -> None:
        before = self.now - timedelta(days=days)
        doomed = {
            i
            for i, e in self.jobs.items()
            if e.finished_at is not None
            and e.finished_at < before
            and e.state != RUNNING
            and e.state != WAITING
        }
        assert self.store.purge(before=before) == len(doomed)
        for job_id in doomed:
            del self.jobs[job_id]

    @rule()
    def restart(self) -> None:
        self._crash_and_restart()

    @rule()
    def recover(self) -> None:
        self.store.maintain(now=self.now)
        orphans = self.store.orphans(now=self.now)
        expected = {
            i for i, e in self.jobs.items() if e.state == RUNNING and e.owner != self.generation
        }
        assert {o.id for o in orphans} == expected
        for orphan in orphans:
            self.store.update(orphan.replace(state=JobState.QUEUED, run_at=self.now))
            entry = self.jobs[orphan.id]
            entry.state, entry.claim, entry.owner, entry.run_at = WAITING, None, None, self.now
            entry.cancel_requested = orphan.cancel_requested

    @precondition(lambda self: any(e.owner == -1 for e in self.jobs.values()))
    @rule()
    def stale_owner_is_refused(self) -> None:
        job_id = next(i for i, e in self.jobs.items() if e.owner == -1)
        claim = self.jobs[job_id].claim
        assert claim is not None
        stale = claim.replace(claim_token="0" * 16, state=JobState.SUCCEEDED, finished_at=self.now)
        try:
            self.store.update(stale)
        except LeaseLost:
            pass
        else:
            raise AssertionError("a stale token was accepted")

    # -- invariants ------------------------------------------------------------

    @invariant()
    def each_job_is_in_exactly_one_file(self) -> None:
        root = Path(self.root)
        seen: dict[str, int] = {}
        for path in (root / "q").rglob("*"):
            if path.is_file():
                parsed = parse_ready(path.name)
                job_id = parsed.job_id if parsed is not None else path.name[:32]
                assert not path.name.endswith(".grab"), path
                seen[job_id] = seen.get(job_id, 0) + 1
        for name in os.listdir(root / "running"):
            running = parse_running(name)
            assert running is not None, name
            seen[running.job_id] = seen.get(running.job_id, 0) + 1
        assert all(n == 1 for n in seen.values()), seen
        assert set(seen) == set(self.jobs)

    @invariant()
    def nothing_is_ever_corrupt(self) -> None:
        assert os.listdir(Path(self.root) / "corrupt") == []

    @invariant()
    def the_store_agrees_with_the_model(self) -> None:
        for job_id, entry in self.jobs.items():
            stored = self.store.get(job_id)
            assert _kind(stored) == entry.state, (job_id, stored, entry)
            assert stored is not None
            if entry.state == WAITING:
                assert stored.run_at == entry.run_at
        found = self.store.find(limit=10_000)
        assert [j.id for j in found] == sorted(self.jobs)


TestJsonStoreModel = JsonStoreMachine.TestCase
_PROFILES = {
    "ci": settings(max_examples=100, stateful_step_count=40),
    "long": settings(max_examples=1000, stateful_step_count=80),
}
TestJsonStoreModel.settings = settings(
    _PROFILES[os.environ.get("BACKRUN_HYPOTHESIS_PROFILE", "ci")],
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
