"""Races between threads of one process on a job that moves: re-claims and readers.

Each test stops one thread inside a store operation with the file-system
hook, at the exact step where another thread's move does harm, so the race
is hit every time instead of once in thousands of runs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import tenacity
from pydantic import BaseModel

import backrun
from backrun.jobs import FINISHED_STATES, Job, JobState
from backrun.retries import RetryPolicy
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage
from backrun.testing import wait_until

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)
JOB_ID = f"{7:032x}"
WAIT_S = 10.0


def new_job() -> Job:
    return Job(id=JOB_ID, handler="h", payload={}, run_at=T0, created_at=T0)


def claim(store: JsonFileStorage) -> Job:
    (job,) = store.claim(queues=None, limit=1, now=T0, worker_id="w0", lease=LEASE)
    return job


def retry_now(job: Job) -> Job:
    """The record a zero-backoff retry writes: waiting again, due at once."""
    return job.replace(state=JobState.SCHEDULED, run_at=T0)


@pytest.fixture
def hook() -> Iterator[Callable[[Callable[[str, str], None]], None]]:
    def install(function: Callable[[str, str], None]) -> None:
        fs.set_hook(function)

    previous = fs.set_hook(None)
    try:
        yield install
    finally:
        fs.set_hook(previous)


def _thread(target: Callable[[], None], errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def pause_at_grab_drop(
    main: threading.Thread, reached: threading.Event, resume: threading.Event
) -> Callable[[str, str], None]:
    """A hook stopping the first write of a thread other than ``main`` before it drops its grab."""

    def pause(operation: str, path: str) -> None:
        if threading.current_thread() is main or operation != "unlink":
            return
        if path.endswith(".grab") and not reached.is_set():
            reached.set()
            assert resume.wait(WAIT_S)

    return pause


def test_a_reclaim_can_write_while_the_previous_claims_write_is_finishing(
    tmp_path: Path, hook: Callable[[Callable[[str, str], None]], None]
) -> None:
    """Item 1: thread A's retry is published but its grab not yet dropped; B re-claims.

    B's finishing write must land: it was refused as a lost claim (the job
    then stayed RUNNING for as long as the worker lived).
    """
    store = JsonFileStorage(tmp_path / "store", fsync=False)
    store.add(new_job())
    first = claim(store)
    at_unlink = threading.Event()
    resume = threading.Event()
    main = threading.current_thread()

    hook(pause_at_grab_drop(main, at_unlink, resume))
    errors: list[BaseException] = []
    writer = _thread(lambda: store.update(retry_now(first)), errors)
    assert at_unlink.wait(WAIT_S)
    try:
        second = claim(store)  # the retry is visible: this process claims it again
        assert second.claim_token != first.claim_token
        store.update(second.replace(state=JobState.DEAD, finished_at=T0))
    finally:
        resume.set()
        writer.join(WAIT_S)
    assert not errors
    final = store.get(JOB_ID)
    assert final is not None
    assert final.state is JobState.DEAD
    assert os.listdir(tmp_path / "store" / "running") == []
    store.close()


def test_the_old_writers_cleanup_keeps_the_new_claim_known(
    tmp_path: Path, hook: Callable[[Callable[[str, str], None]], None]
) -> None:
    """After A's write finishes, the store still knows B's claim without a listing."""
    store = JsonFileStorage(tmp_path / "store", fsync=False)
    store.add(new_job())
    first = claim(store)
    at_unlink = threading.Event()
    resume = threading.Event()
    main = threading.current_thread()

    hook(pause_at_grab_drop(main, at_unlink, resume))
    errors: list[BaseException] = []
    writer = _thread(lambda: store.update(retry_now(first)), errors)
    assert at_unlink.wait(WAIT_S)
    second = claim(store)
    resume.set()
    writer.join(WAIT_S)
    assert not errors
    assert second.claim_token is not None
    assert JOB_ID in store.ctx.mine
    assert second.claim_token in store.ctx.mine[JOB_ID]
    store.close()


def test_get_never_misses_a_job_renamed_twice_during_one_lookup(
    tmp_path: Path, hook: Callable[[Callable[[str, str], None]], None]
) -> None:
    """Item 2: a reader's look-up is crossed by a retry, then by the next claim.

    Pass one reads the running file just after the retry grabbed it and looks
    at ready/ before the retry is published there; pass two lists running/
    before the next claim and ready/ after it. The job existed all along.
    """
    path = tmp_path / "store"
    owner = JsonFileStorage(path, fsync=False)
    owner.add(new_job())
    first = claim(owner)
    reader = JsonFileStorage(path, fsync=False)  # another process's view
    main = threading.current_thread()
    step = {"n": 0}
    at_publish = threading.Event()
    publish = threading.Event()
    errors: list[BaseException] = []
    threads: list[threading.Thread] = []
    running_dir = os.path.join(reader.path, "running")
    tmp_dir = os.path.join(reader.path, "tmp")

    def choreography(operation: str, target: str) -> None:
        if threading.current_thread() is not main:
            if operation == "rename" and os.path.dirname(target) == tmp_dir:
                at_publish.set()  # the retry's record is about to enter ready/
                assert publish.wait(WAIT_S)
            return
        if step["n"] == 0 and operation == "read" and os.path.dirname(target) == running_dir:
            step["n"] = 1  # the retry grabs the running file under the reader's nose
            threads.append(_thread(lambda: owner.update(retry_now(first)), errors))
            assert at_publish.wait(WAIT_S)
        elif step["n"] == 1 and operation == "listdir" and target == running_dir:
            step["n"] = 2  # the second pass begins: let the retry finish
            publish.set()
            threads[0].join(WAIT_S)
        elif step["n"] == 2 and operation == "listdir" and target.endswith("ready"):
            step["n"] = 3  # ...and the job is claimed again before ready/ is listed
            threads.append(_thread(lambda: claim_into(threads), errors))
            threads[-1].join(WAIT_S)

    claimed: list[Job] = []

    def claim_into(_: object) -> None:
        claimed.append(claim(owner))

    hook(choreography)
    try:
        seen = reader.get(JOB_ID)
    finally:
        publish.set()
        hook(lambda operation, target: None)
        for thread in threads:
            thread.join(WAIT_S)
    assert not errors
    assert step["n"] == 3, "the choreography did not run as planned"
    assert seen is not None
    assert seen.state is JobState.RUNNING
    assert seen.claim_token == claimed[0].claim_token
    owner.close()
    reader.close()


def test_get_of_an_unknown_job_still_answers_none(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "store", fsync=False)
    store.add(new_job())
    assert store.get(f"{8:032x}") is None
    store.close()


class Nothing(BaseModel):
    n: int


def test_zero_backoff_retries_under_a_live_worker_all_finish(tmp_path: Path) -> None:
    """Item 1 end to end, as the issue reproduces it: one job at a time, none stays RUNNING.

    Before the fix 13 to 26 of 150 stayed RUNNING (attempts 2 or 3) under the
    live worker; every job must now end DEAD after its three attempts.
    """
    store = JsonFileStorage(tmp_path / "store")  # fsync widens the window, as in the issue
    engine = backrun.Engine(
        store, middleware=[], retry=RetryPolicy(max_retries=2, wait=tenacity.wait_fixed(0))
    )

    @engine.handler(name="boom")
    def boom(payload: Nothing) -> None:
        raise RuntimeError("boom")

    def finished(job_id: str) -> bool:
        job = store.get(job_id)
        return job is not None and job.state in FINISHED_STATES

    try:
        with engine.running():
            for n in range(60):
                job_id = engine.enqueue(boom, {"n": n}).id
                wait_until(lambda: finished(job_id), timeout=5.0, message=f"job {n} finished")  # noqa: B023
                final = store.get(job_id)
                assert final is not None
                assert (final.state, final.attempts) == (JobState.DEAD, 3)
    finally:
        engine.close()
