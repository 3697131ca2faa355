"""The operator part of the storage contract: live workers' records and paused queues.

Runs against every backend through the ``storage`` fixture of conftest.py,
like tests/storage/test_contract.py.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from backrun.jobs import JobState
from backrun.storage.base import Storage
from backrun.workerinfo import WorkerInfo
from tests.storage.factories import LEASE, T0, make_job


def info(worker_id: str = "host-1-0000abcd", *, running: tuple[str, ...] = ()) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id,
        host="host",
        pid=1,
        queues=("mail", "default"),
        max_parallelism=4,
        started_at=T0,
        last_seen=T0 + timedelta(seconds=3),
        running=running,
    )


TTL = timedelta(seconds=60)


def claim_ids(storage: Storage, **kw: object) -> set[str]:
    jobs = storage.claim(
        queues=kw.get("queues"),  # type: ignore[arg-type]
        limit=100,
        now=T0,
        worker_id="w-test",
        lease=LEASE,
    )
    return {job.id for job in jobs}


# -- live workers ------------------------------------------------------------------


def test_a_registered_worker_s_record_is_read_back_whole(storage: Storage) -> None:
    storage.register_worker("host-1-0000abcd", now=T0)
    record = info(running=("a" * 32,))
    storage.publish_worker(record, ttl=TTL)
    assert storage.live_workers(now=T0) == [record]


def test_a_newer_record_replaces_the_older(storage: Storage) -> None:
    storage.register_worker("host-1-0000abcd", now=T0)
    storage.publish_worker(info(), ttl=TTL)
    newer = info(running=("b" * 32, "c" * 32))
    storage.publish_worker(newer, ttl=TTL)
    assert storage.live_workers(now=T0) == [newer]


def test_records_are_listed_by_worker_id(storage: Storage) -> None:
    for worker_id in ("host-2-0000beef", "host-1-0000abcd"):
        storage.register_worker(worker_id, now=T0)
        storage.publish_worker(info(worker_id), ttl=TTL)
    assert [w.id for w in storage.live_workers(now=T0)] == ["host-1-0000abcd", "host-2-0000beef"]


def test_an_unregistered_worker_disappears(storage: Storage) -> None:
    storage.register_worker("host-1-0000abcd", now=T0)
    storage.register_worker("host-2-0000beef", now=T0)
    storage.publish_worker(info("host-1-0000abcd"), ttl=TTL)
    storage.publish_worker(info("host-2-0000beef"), ttl=TTL)
    storage.unregister_worker("host-1-0000abcd")
    assert [w.id for w in storage.live_workers(now=T0)] == ["host-2-0000beef"]


def test_a_record_of_a_worker_never_registered_is_not_shown(storage: Storage) -> None:
    storage.publish_worker(info("host-9-0000dead"), ttl=TTL)
    assert storage.live_workers(now=T0) == []


# -- paused queues -----------------------------------------------------------------


def test_pause_and_resume_report_whether_they_changed_anything(storage: Storage) -> None:
    assert storage.paused_queues() == frozenset()
    assert storage.pause_queue("mail", now=T0) is True
    assert storage.pause_queue("mail", now=T0) is False
    assert storage.pause_queue("default", now=T0) is True
    assert storage.paused_queues() == frozenset({"mail", "default"})
    assert storage.resume_queue("mail") is True
    assert storage.resume_queue("mail") is False
    assert storage.paused_queues() == frozenset({"default"})


def test_a_paused_queue_accepts_jobs_but_none_is_claimed(storage: Storage) -> None:
    storage.pause_queue("mail", now=T0)
    mail = make_job(queue="mail", priority=9)
    other = make_job(queue="default")
    storage.add(mail)
    storage.add(other)
    assert storage.get(mail.id) == mail
    assert claim_ids(storage) == {other.id}
    assert claim_ids(storage, queues=["mail"]) == set()
    assert storage.counts()[("mail", JobState.QUEUED)] == 1


def test_a_resumed_queue_is_claimed_again(storage: Storage) -> None:
    mail = make_job(queue="mail")
    storage.add(mail)
    storage.pause_queue("mail", now=T0)
    assert claim_ids(storage, queues=["mail"]) == set()
    storage.resume_queue("mail")
    assert claim_ids(storage, queues=["mail"]) == {mail.id}


def test_next_run_at_ignores_paused_queues(storage: Storage) -> None:
    storage.add(make_job(queue="mail", run_at=T0))
    storage.add(make_job(queue="default", run_at=T0 + timedelta(minutes=5)))
    storage.pause_queue("mail", now=T0)
    assert storage.next_run_at(queues=None) == T0 + timedelta(minutes=5)
    assert storage.next_run_at(queues=["mail"]) is None
    storage.resume_queue("mail")
    assert storage.next_run_at(queues=None) == T0


def test_a_job_running_when_its_queue_is_paused_still_finishes(storage: Storage) -> None:
    storage.add(make_job(queue="mail"))
    (job,) = storage.claim(queues=None, limit=1, now=T0, worker_id="w-test", lease=LEASE)
    storage.pause_queue("mail", now=T0)
    storage.update(job.replace(state=JobState.SUCCEEDED, finished_at=T0))
    stored = storage.get(job.id)
    assert stored is not None
    assert stored.state is JobState.SUCCEEDED


def test_pausing_from_many_threads_changes_it_once(storage: Storage) -> None:
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def pause() -> None:
        barrier.wait()
        changed = storage.pause_queue("mail", now=T0)
        with lock:
            results.append(changed)

    threads = [threading.Thread(target=pause) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


# -- persistence and other processes' view ---------------------------------------


def test_jsonfile_pause_survives_a_reopen_and_is_seen_by_another_store(tmp_path: Path) -> None:
    from backrun.storage.jsonfile import JsonFileStorage

    first = JsonFileStorage(tmp_path / "t", fsync=False)
    second = JsonFileStorage(tmp_path / "t", fsync=False)
    try:
        job = make_job(queue="mail")
        second.add(job)
        assert second.next_run_at(queues=None) == T0  # cached listing in place
        first.pause_queue("mail", now=T0)
        assert claim_ids(second) == set()
        assert second.next_run_at(queues=None) is None
        first.close()
        reopened = JsonFileStorage(tmp_path / "t", fsync=False)
        assert reopened.paused_queues() == frozenset({"mail"})
        reopened.resume_queue("mail")
        reopened.close()
        assert claim_ids(second) == {job.id}
    finally:
        second.close()


def test_postgres_pause_survives_a_new_store_on_the_schema() -> None:
    from backrun.storage.postgres import PostgresStorage
    from tests.storage.postgres_support import postgres_store, tagged_dsn

    first = postgres_store()
    second = PostgresStorage(tagged_dsn(first.schema), schema=first.schema, pool_size=2)
    try:
        job = make_job(queue="mail")
        second.add(job)
        first.pause_queue("mail", now=T0)
        assert second.paused_queues() == frozenset({"mail"})
        assert claim_ids(second) == set()
        second.resume_queue("mail")
        assert claim_ids(first) == {job.id}
    finally:
        second.close()
        first.close()


def test_postgres_record_expires_after_its_ttl() -> None:
    from tests.helpers import wait_until
    from tests.storage.postgres_support import postgres_store

    store = postgres_store()
    try:
        store.register_worker("host-1-0000abcd", now=T0)
        store.publish_worker(info(), ttl=timedelta(milliseconds=300))
        assert [w.id for w in store.live_workers(now=T0)] == ["host-1-0000abcd"]
        wait_until(lambda: store.live_workers(now=T0) == [], timeout=5, what="record expiry")
    finally:
        store.close()


# -- browsing ----------------------------------------------------------------------


def add_jobs(storage: Storage, n: int, **kw: object) -> list[str]:
    ids = []
    for _ in range(n):
        job = make_job(**kw)
        storage.add(job)
        ids.append(job.id)
    return ids


def test_find_page_is_newest_first_and_pages_without_overlap(storage: Storage) -> None:
    ids = add_jobs(storage, 7)
    newest_first = sorted(ids, reverse=True)
    assert [j.id for j in storage.find_page(limit=3)] == newest_first[:3]
    assert [j.id for j in storage.find_page(offset=3, limit=3)] == newest_first[3:6]
    assert [j.id for j in storage.find_page(offset=6, limit=3)] == newest_first[6:]
    assert storage.find_page(offset=7, limit=3) == []


def test_find_page_filters_by_state_queue_and_handler(storage: Storage) -> None:
    mail = add_jobs(storage, 2, queue="mail", handler="send")
    add_jobs(storage, 2, queue="mail", handler="other")
    default = add_jobs(storage, 2, queue="default", handler="send")
    (claimed,) = storage.claim(queues=["mail"], limit=1, now=T0, worker_id="w-x", lease=LEASE)
    found = storage.find_page(queue="mail", handler="send", offset=0, limit=10)
    assert {j.id for j in found} == set(mail)
    running = storage.find_page(state=JobState.RUNNING)
    assert [j.id for j in running] == [claimed.id]
    queued_mail = storage.find_page(state=JobState.QUEUED, queue="mail", handler="send")
    assert {j.id for j in queued_mail} == set(mail) - {claimed.id}
    sends = sorted(mail + default, reverse=True)
    assert [j.id for j in storage.find_page(handler="send", offset=1, limit=2)] == sends[1:3]


def test_finish_counts_buckets_finishes_by_state(storage: Storage) -> None:
    for minute, state in ((1, JobState.SUCCEEDED), (1, JobState.SUCCEEDED), (7, JobState.DEAD)):
        storage.add(make_job())
        (job,) = storage.claim(queues=None, limit=1, now=T0, worker_id="w-x", lease=LEASE)
        storage.update(job.replace(state=state, finished_at=T0 + timedelta(minutes=minute)))
    storage.add(make_job())
    (late,) = storage.claim(queues=None, limit=1, now=T0, worker_id="w-x", lease=LEASE)
    storage.update(late.replace(state=JobState.SUCCEEDED, finished_at=T0 + timedelta(hours=2)))
    counts = storage.finish_counts(since=T0, until=T0 + timedelta(minutes=10), buckets=2)
    assert counts[JobState.SUCCEEDED] == [2, 0]
    assert counts[JobState.DEAD] == [0, 1]
    assert counts[JobState.CANCELLED] == [0, 0]
