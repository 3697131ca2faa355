"""What the PostgreSQL store adds beyond the shared contract, against a real server.

Each test gets its own schema, dropped when its store closes. Liveness is
judged by the database clock, so the few tests about expiry use leases of a
fraction of a second and wait on conditions with deadlines.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backrun.errors import LeaseLost, StorageError
from backrun.jobs import Job, JobState, new_job_id
from backrun.testing import wait_until
from tests.helpers import LEASE, T0, make_job
from tests.storage.postgres_support import (
    drop_schema,
    postgres_dsn,
    postgres_store,
    require_postgres,
    tagged_dsn,
    terminate_backends,
    unique_schema,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def store() -> Iterator[Any]:
    storage = postgres_store()
    try:
        yield storage
    finally:
        storage.close()


def psql(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(postgres_dsn(), autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


# -- schema and migrations -----------------------------------------------------


def test_migrate_is_versioned_idempotent_and_safe_to_race() -> None:
    require_postgres()
    from backrun.storage.postgres import PostgresStorage
    from backrun.storage.postgres.schema import MIGRATIONS

    schema = unique_schema()
    stores = [PostgresStorage(postgres_dsn(), schema=schema, pool_size=1) for _ in range(3)]
    try:
        results: list[list[int]] = []
        threads = [threading.Thread(target=lambda s=s: results.append(s.migrate())) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        versions = [version for version, _ in MIGRATIONS]
        assert sorted(results) == [[], [], versions]
        assert stores[0].migrate() == []
        applied = psql(f'SELECT version FROM "{schema}".schema_versions ORDER BY version')
        assert applied == [(v,) for v in versions]
    finally:
        for s in stores:
            s.close()
        drop_schema(schema)


def test_missing_tables_raise_storage_error_naming_the_fix() -> None:
    require_postgres()
    from backrun.storage.postgres import PostgresStorage

    store = PostgresStorage(postgres_dsn(), schema=unique_schema(), pool_size=1)
    try:
        with pytest.raises(StorageError, match="backrun db init"):
            store.get(new_job_id())
    finally:
        store.close()


@pytest.mark.parametrize("name", ["Backrun", "a-b", 'x"; DROP TABLE y; --', "", "a" * 64])
def test_unsafe_schema_names_are_refused(name: str) -> None:
    from backrun.storage.postgres import PostgresStorage

    with pytest.raises(ValueError, match="schema name"):
        PostgresStorage("postgresql://127.0.0.1:1/none", schema=name)


def test_claim_plans_use_the_partial_ready_index_despite_many_finished_rows(store: Any) -> None:
    s = store.schema
    psql(
        f'INSERT INTO "{s}".jobs (id, handler, queue, priority, state, attempts, max_attempts, '
        "run_at, finished_at, payload) SELECT lpad(to_hex(i), 32, '0'), 'h', 'default', 0, "
        "'succeeded', 1, 4, now(), now(), '{}' FROM generate_series(1, 50000) AS i"
    )
    store.add_many([make_job() for _ in range(10)])
    psql(f'ANALYZE "{s}".jobs')
    for queues in (None, ["default"]):
        sql = store._sql
        query = sql.claim_head + (" AND queue = ANY(%(queues)s)" if queues else "")
        query += sql.claim_tail
        params = {"now": T0, "limit": 1, "worker": "w", "until": T0, "queues": queues, "batch": "b"}
        plan = "\n".join(r[0] for r in psql("EXPLAIN " + query, params))
        assert "jobs_ready" in plan, plan
        # (paused_queues, a few rows at most, is read once per claim: a scan there is fine)
        assert "Seq Scan on jobs" not in plan, plan


# -- claims, tokens, liveness --------------------------------------------------


@pytest.mark.parametrize("synchronous", [False, True])
def test_a_claim_is_one_statement_whose_commit_setting_ends_with_it(synchronous: bool) -> None:
    store: Any = postgres_store(pool_size=1, synchronous_claims=synchronous)
    try:
        store.add_many([make_job() for _ in range(2)])
        sent: list[str] = []
        real = store._db.connect

        @contextlib.contextmanager
        def spying() -> Iterator[Any]:
            with real() as conn:
                execute = conn.execute

                def recording(query: Any, params: Any = None) -> Any:
                    sent.append(str(query))
                    return execute(query, params)

                conn.execute = recording
                try:
                    yield conn
                finally:
                    del conn.execute

        store._db.connect = spying
        try:
            [job] = store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE)
        finally:
            store._db.connect = real
        assert len(sent) == 1  # no BEGIN / SET LOCAL / COMMIT round trips
        assert ("set_config('synchronous_commit', 'off'" in sent[0]) is not synchronous
        # The only pooled connection: the setting must not outlive the claim, or
        # the owner's update that follows would commit without waiting for the disk.
        with store._db.connect() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        store.update(job.replace(state=JobState.SUCCEEDED, finished_at=T0))
    finally:
        store.close()


def test_claim_returns_a_full_record_whose_late_writer_is_refused(store: Any) -> None:
    job = make_job(payload={"text": "nul \x00 and ünïcode", "big": 2**62, "f": 0.1})
    store.add(job)
    [claimed] = store.claim(queues=None, limit=5, now=T0, worker_id="w1", lease=LEASE)
    assert claimed.payload == job.payload
    store.update(claimed.replace(state=JobState.QUEUED, attempts=0))
    with pytest.raises(LeaseLost):
        store.update(claimed.replace(state=JobState.SUCCEEDED, finished_at=T0))
    assert store.get(job.id).state is JobState.QUEUED


def test_an_expired_worker_heartbeat_makes_its_jobs_orphans(store: Any) -> None:
    store.add(make_job())
    store.register_worker("w-short", now=T0)
    [job] = store.claim(queues=None, limit=1, now=T0, worker_id="w-short", lease=LEASE)
    store.heartbeat([job], worker_id="w-short", now=T0, lease_until=T0 + timedelta(seconds=0.3))
    assert store.orphans(now=T0) == []
    # The fake time passed in never moves: expiry is judged by the database clock.
    wait_until(lambda: [o.id for o in store.orphans(now=T0)] == [job.id], timeout=10)


def test_a_live_workers_long_job_is_never_an_orphan(store: Any) -> None:
    store.add(make_job())
    ttl = timedelta(seconds=0.3)
    store.register_worker("w-live", now=T0)
    [job] = store.claim(queues=None, limit=1, now=T0, worker_id="w-live", lease=LEASE)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(ttl.total_seconds() / 3):
            store.heartbeat([job], worker_id="w-live", now=T0, lease_until=T0 + ttl)

    beater = threading.Thread(target=beat)
    beater.start()
    try:
        # Watch for five leases' worth of database time.
        deadline = time.monotonic() + 5 * ttl.total_seconds()
        while time.monotonic() < deadline:
            assert store.orphans(now=T0) == []
    finally:
        stop.set()
        beater.join()


def test_a_claim_its_live_worker_never_heard_of_becomes_an_orphan(store: Any) -> None:
    """A claim whose reply was lost: the worker heartbeats but never renews that job."""
    held, lost = make_job(), make_job()
    store.add_many([held, lost])
    ttl = timedelta(seconds=0.2)
    claimed = store.claim(queues=None, limit=2, now=T0, worker_id="w", lease=LEASE)
    mine = [j for j in claimed if j.id == held.id]

    def lost_is_orphan() -> bool:
        store.heartbeat(mine, worker_id="w", now=T0, lease_until=T0 + ttl)
        return [o.id for o in store.orphans(now=T0)] == [lost.id]

    wait_until(lost_is_orphan, timeout=10)


# -- transactional enqueue and notifications -----------------------------------


def test_enqueue_in_the_callers_transaction_commits_or_rolls_back_with_it(store: Any) -> None:
    import psycopg

    woken = threading.Event()
    store.subscribe(woken.set)
    wait_until(woken.is_set)  # the listener calls back once connected
    woken.clear()
    rolled_back, committed = make_job(), make_job()
    with psycopg.connect(postgres_dsn()) as conn:
        with conn.transaction(force_rollback=True):
            store.add(rolled_back, connection=conn)
            assert store.get(rolled_back.id) is None  # not visible outside the transaction
        with conn.transaction():
            store.add(committed, connection=conn)
            assert store.get(committed.id) is None
            assert not woken.is_set()
        with pytest.raises(ValueError, match="exists already"), conn.transaction():
            store.add(committed, connection=conn)
    assert store.get(rolled_back.id) is None
    assert store.get(committed.id) == committed
    wait_until(woken.is_set)


def test_add_many_is_all_or_nothing(store: Any) -> None:
    first = make_job()
    store.add(first)
    batch = [make_job(), first.replace(payload={"other": True}), make_job()]
    with pytest.raises(ValueError, match="exists already"):
        store.add_many(batch)
    assert [j.id for j in store.find()] == [first.id]


def test_the_listener_reconnects_after_its_connection_is_killed() -> None:
    store: Any = postgres_store()
    from backrun.storage.postgres import PostgresStorage

    listener_app = store.schema + "_l"
    other = PostgresStorage(tagged_dsn(listener_app), schema=store.schema, pool_size=1)
    calls: list[int] = []
    try:
        other.subscribe(lambda: calls.append(1))
        wait_until(lambda: len(calls) >= 1)
        assert terminate_backends(listener_app) >= 1
        wait_until(lambda: len(calls) >= 2)  # called back after reconnecting
        seen = len(calls)
        store.add(make_job())
        wait_until(lambda: len(calls) > seen)
    finally:
        other.close()
        store.close()


# -- connection loss -----------------------------------------------------------


def test_killed_pool_connections_cost_at_most_one_failed_call(store: Any) -> None:
    jobs = [make_job() for _ in range(20)]
    store.add_many(jobs)
    for _ in range(3):
        store.get(jobs[0].id)
    assert terminate_backends(store.schema) >= 1
    assert store.get(jobs[0].id) == jobs[0]  # reads retry once on a fresh connection
    assert terminate_backends(store.schema) >= 1
    claimed: list[Job] = []

    def claim_more() -> bool:
        with contextlib.suppress(StorageError):
            claimed.extend(store.claim(queues=None, limit=7, now=T0, worker_id="w", lease=LEASE))
        return len(claimed) == len(jobs)

    wait_until(claim_more)
    assert sorted(j.id for j in claimed) == sorted(j.id for j in jobs)


def test_an_unreachable_server_raises_storage_error_promptly() -> None:
    from backrun.storage.postgres import PostgresStorage

    store = PostgresStorage("postgresql://postgres@127.0.0.1:1/test", timeout=0.5, pool_size=1)
    try:
        started = time.monotonic()
        with pytest.raises(StorageError, match="unreachable"):
            store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE)
        assert time.monotonic() - started < 5
    finally:
        store.close()


def test_a_pool_passed_in_is_used_and_left_open() -> None:
    require_postgres()
    from psycopg_pool import ConnectionPool

    from backrun.storage.postgres import PostgresStorage

    schema = unique_schema()
    kwargs = {"application_name": schema}  # settings given to the pool reach the listener too
    with ConnectionPool(postgres_dsn(), kwargs=kwargs, min_size=1, max_size=2, open=True) as pool:
        store = PostgresStorage(pool, schema=schema)
        try:
            store.migrate()
            woken = threading.Event()
            store.subscribe(woken.set)
            wait_until(woken.is_set)
            woken.clear()
            job = make_job()
            store.add(job)  # outside a transaction: the caller's pool is not autocommit
            assert store.get(job.id) == job
            wait_until(woken.is_set)
            apps = psql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (schema,)
            )
            assert apps[0][0] >= 2  # the pool's connection and the listener's
        finally:
            store.close()
        assert not pool.closed
        with pool.connection() as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


# -- retention -----------------------------------------------------------------


def test_maintain_purges_finished_jobs_past_retention_in_batches(store: Any) -> None:
    store.purge_batch = 100
    old = [make_job(state=JobState.SUCCEEDED, finished_at=T0, handler="old") for _ in range(250)]
    young = make_job(state=JobState.DEAD, finished_at=T0 + timedelta(days=6), handler="young")
    waiting = make_job()
    s = store.schema
    store.add_many([j.replace(state=JobState.QUEUED, finished_at=None) for j in [*old, young]])
    for job in (old[0], young):  # finished_at and state come from the record's own values
        psql(
            f'UPDATE "{s}".jobs SET state = %s, finished_at = %s WHERE handler = %s',
            (job.state.value, job.finished_at, job.handler),
        )
    store.add(waiting)
    store.maintain(now=T0 + timedelta(days=7, seconds=1))
    assert {j.id for j in store.find(limit=1000)} == {young.id, waiting.id}


DJANGO_PROGRAM = """
import sys
import django
from django.conf import settings
from psycopg.conninfo import conninfo_to_dict

params = conninfo_to_dict(sys.argv[1])
settings.configure(DATABASES={"default": {
    "ENGINE": "django.db.backends.postgresql", "NAME": params.get("dbname", "test"),
    "USER": params.get("user", "postgres"), "HOST": params.get("host", "127.0.0.1"),
    "PORT": params.get("port", "5432"),
}})
django.setup()
from django.db import connection, transaction
from backrun.jobs import Job, new_job_id
from backrun.storage.postgres import PostgresStorage
from datetime import UTC, datetime

now = datetime(2030, 1, 1, tzinfo=UTC)
store = PostgresStorage(sys.argv[1], schema=sys.argv[2], pool_size=1)
kept, dropped = (Job(id=new_job_id(), handler="h", payload={"a": [1]}, run_at=now) for _ in "ab")
try:
    with transaction.atomic():
        store.add(dropped, connection=connection)
        raise RuntimeError("roll back")
except RuntimeError:
    pass
with transaction.atomic():
    store.add(kept, connection=connection)
assert store.get(dropped.id) is None
assert store.get(kept.id) == kept
print("ok")
"""


def test_django_connection_enqueues_inside_the_request_transaction(store: Any) -> None:
    """Django's connection (client-side binding) works as the caller's connection."""
    pytest.importorskip("django")
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", DJANGO_PROGRAM, postgres_dsn(), store.schema],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_engine_enqueue_joins_the_callers_transaction(store: Any) -> None:
    import inspect

    import psycopg
    from pydantic import BaseModel

    import backrun

    if "connection" not in inspect.signature(backrun.Engine.enqueue).parameters:
        pytest.skip("engine.enqueue(..., connection=conn) is not plumbed to the store yet")

    class Note(BaseModel):
        text: str

    engine = backrun.Engine(store, middleware=[])

    @engine.handler(name="tests.note")
    def note(payload: Note) -> None:
        return None

    enqueue: Any = engine.enqueue
    with psycopg.connect(postgres_dsn()) as conn:
        with conn.transaction(force_rollback=True):
            dropped = enqueue(note, {"text": "a"}, connection=conn)
        with conn.transaction():
            kept = enqueue(note, {"text": "b"}, connection=conn)
    assert store.get(dropped.id) is None
    assert store.get(kept.id) == kept
