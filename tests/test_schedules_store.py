"""Storage.add_once, the tick's atomic primitive: exactly one creator, on every store.

Runs on memory, JSON files and PostgreSQL, with racing threads on one store
object and on two views of one store (two JsonFileStorage or PostgresStorage
objects on the same directory or schema, as two processes would have).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backrun.jobs import Job, JobState
from backrun.schedules import tick_id
from backrun.storage.base import Storage
from backrun.storage.memory import MemoryStorage
from tests.storage.conftest import BACKENDS
from tests.storage.postgres_support import fresh_postgres_storage, postgres_dsn, require_postgres

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def tick_job(name: str = "nightly", tick: datetime = NOW) -> Job:
    return Job(
        id=tick_id(name, tick),
        handler="h",
        payload={},
        run_at=tick,
        created_at=tick,
        headers={"backrun-schedule": name},
    )


@pytest.fixture(params=sorted(BACKENDS))
def views(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Storage, Storage]]:
    """Two store objects on one store (the same object for memory)."""
    if request.param == "memory":
        store = MemoryStorage()
        yield store, store
        store.close()
        return
    if request.param == "jsonfile":
        from backrun.storage.jsonfile import JsonFileStorage

        a = JsonFileStorage(tmp_path / "store", fsync=False)
        b = JsonFileStorage(tmp_path / "store", fsync=False)
        yield a, b
        b.close()
        a.close()
        return
    require_postgres()
    from backrun.storage.postgres import PostgresStorage

    first = fresh_postgres_storage()
    assert first is not None
    second = PostgresStorage(postgres_dsn(), schema=first.schema, pool_size=4)
    yield first, second
    second.close()
    first.close()


def race(adders: list[Callable[[], bool]]) -> list[bool]:
    barrier = threading.Barrier(len(adders))
    results: list[bool] = [False] * len(adders)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = adders[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(adders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_concurrent_creators_of_one_tick_create_exactly_one_job(
    views: tuple[Storage, Storage],
) -> None:
    a, b = views
    for round_ in range(10):
        job = tick_job(tick=NOW + timedelta(seconds=round_))
        results = race([lambda s=s, j=job: s.add_once(j) for s in (a, b) * 4])
        assert results.count(True) == 1, results
        assert a.get(job.id) is not None
    assert sum(a.counts().values()) == 10


def test_a_tick_already_claimed_or_finished_is_not_created_again(
    views: tuple[Storage, Storage],
) -> None:
    # The JSON store's plain add() accepted this: its check did not see running/.
    a, b = views
    job = tick_job()
    assert a.add_once(job)
    (claimed,) = a.claim(queues=None, limit=1, now=NOW, worker_id="w-1", lease=timedelta(60))
    assert not b.add_once(job)
    a.update(claimed.replace(state=JobState.SUCCEEDED, finished_at=NOW))
    assert not b.add_once(job)
    assert not a.add_once(job)
    assert a.claim(queues=None, limit=5, now=NOW, worker_id="w-2", lease=timedelta(60)) == []
    assert sum(a.counts().values()) == 1


def test_add_once_refuses_a_malformed_id(views: tuple[Storage, Storage]) -> None:
    with pytest.raises(ValueError, match="job id"):
        views[0].add_once(tick_job().replace(id="../../etc/passwd"))


def test_a_creator_killed_after_adding_but_before_its_marker_is_not_repeated(
    views: tuple[Storage, Storage],
) -> None:
    a, b = views
    job = tick_job()
    a.add(job)  # what a creator killed between its add and its marker leaves
    assert a.claim(queues=None, limit=1, now=NOW, worker_id="w-1", lease=timedelta(60))
    assert not b.add_once(job)
    assert sum(a.counts().values()) == 1


def test_jsonfile_markers_are_private_and_purged_with_retention(tmp_path: Path) -> None:
    from backrun.storage.jsonfile import JsonFileStorage

    store = JsonFileStorage(tmp_path / "store", fsync=False, retention=timedelta(hours=1))
    try:
        job = tick_job()
        assert store.add_once(job)
        assert not (tmp_path / "store" / "ticks" / (job.id + ".lock")).exists()
        reservation = tmp_path / "store" / "ticks" / job.id
        assert reservation.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "store" / "ticks").stat().st_mode & 0o777 == 0o700
        store.maintain(now=datetime.now(UTC))
        assert reservation.exists()
        store.maintain(now=datetime.now(UTC) + timedelta(hours=2))
        assert not reservation.exists()
    finally:
        store.close()


def test_postgres_two_views_race_many_ticks(tmp_path: Path) -> None:
    require_postgres()
    from backrun.storage.postgres import PostgresStorage

    first = fresh_postgres_storage()
    assert first is not None
    views = [
        first,
        *(PostgresStorage(postgres_dsn(), schema=first.schema, pool_size=4) for _ in range(2)),
    ]
    try:
        jobs = [tick_job("every-second", NOW + timedelta(seconds=i)) for i in range(20)]

        won: list[int] = []

        def creator(store: Storage) -> Callable[[], bool]:
            def add_all() -> bool:
                won.append(sum(store.add_once(j) for j in jobs))
                return True

            return add_all

        race([creator(v) for v in views])
        assert sum(won) == 20, won
        assert first.counts() == {("default", JobState.QUEUED): 20}
    finally:
        for view in views[1:]:
            view.close()
        first.close()
