"""Unique jobs and handler limits through the Engine's API (the in-process store).

The store-level guarantees are in tests/storage/test_contract_limits.py (every
store); across real processes in tests/limits/.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

import backrun
from backrun.jobs import JobState
from backrun.scheduler import Scheduler
from backrun.storage.base import Capabilities
from backrun.testing import FakeClock


class Invoice(BaseModel):
    number: int
    tenant: str = "acme"


def make_engine(**options: Any) -> backrun.Engine:
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[], **options)

    @engine.handler(name="invoice")
    def invoice(payload: Invoice) -> None:
        pass

    return engine


def test_a_second_enqueue_with_the_key_returns_the_first_job() -> None:
    engine = make_engine()
    first = engine.enqueue("invoice", Invoice(number=42), unique_key="invoice:42")
    second = engine.enqueue("invoice", Invoice(number=42), unique_key="invoice:42")
    assert second.id == first.id
    assert len(engine.jobs()) == 1
    other = engine.enqueue("invoice", Invoice(number=43), unique_key="invoice:43")
    assert other.id != first.id


def test_the_key_is_free_once_the_job_finished_unless_unique_for_covers_it() -> None:
    clock = FakeClock()
    engine = make_engine(clock=clock)
    first = engine.enqueue("invoice", Invoice(number=1), unique_key="k")
    engine.run_until_idle(timeout=10)
    again = engine.enqueue("invoice", Invoice(number=1), unique_key="k")
    assert again.id != first.id
    engine.run_until_idle(timeout=10)
    held = engine.enqueue("invoice", {"number": 1}, unique_key="h", unique_for=timedelta(hours=1))
    engine.run_until_idle(timeout=10)
    clock.advance(timedelta(minutes=59))
    assert engine.enqueue("invoice", {"number": 1}, unique_key="h", unique_for=3600).id == held.id
    clock.advance(timedelta(minutes=1))
    assert engine.enqueue("invoice", {"number": 1}, unique_key="h").id != held.id


def test_retrying_a_dead_unique_job_is_not_blocked_by_its_key() -> None:
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[])
    fail = [True]

    @engine.handler(name="flaky")
    def flaky(payload: Invoice) -> None:
        if fail[0]:
            raise backrun.DoNotRetry("no")

    job = engine.enqueue("flaky", Invoice(number=1), unique_key="k")
    engine.run_until_idle(timeout=10)
    assert engine.get(job.id).state is JobState.DEAD  # type: ignore[union-attr]
    fail[0] = False
    assert engine.retry(job.id).state is JobState.QUEUED
    engine.run_until_idle(timeout=10)
    assert engine.get(job.id).state is JobState.SUCCEEDED  # type: ignore[union-attr]


def test_enqueue_many_takes_a_key_function_and_dedupes_within_the_batch() -> None:
    engine = make_engine()
    stored = engine.enqueue("invoice", Invoice(number=1), unique_key="invoice:1")
    jobs = engine.enqueue_many(
        "invoice",
        [Invoice(number=n) for n in (1, 2, 2, 3)] + [{"number": 4}],
        unique_key=lambda p: None if isinstance(p, dict) else f"invoice:{p.number}",
    )
    assert len(jobs) == 5
    assert jobs[0].id == stored.id
    assert jobs[1].id == jobs[2].id
    assert jobs[4].unique_key is None
    assert len(engine.jobs()) == 4


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"unique_key": ""}, ValueError),
        ({"unique_key": "x" * 1001}, ValueError),
        ({"unique_key": 42}, TypeError),
        ({"unique_for": 60}, ValueError),
        ({"unique_key": "k", "unique_for": -1}, ValueError),
        ({"unique_key": "k", "unique_for": float("nan")}, ValueError),
        ({"unique_key": "k", "unique_for": "1h"}, TypeError),
    ],
)
def test_bad_unique_arguments_are_refused(options: dict[str, Any], error: type) -> None:
    engine = make_engine()
    with pytest.raises(error):
        engine.enqueue("invoice", Invoice(number=1), **options)
    assert engine.jobs() == []


def test_unique_key_with_connection_needs_a_store_that_joins_transactions() -> None:
    engine = make_engine()
    with pytest.raises(TypeError):
        engine.enqueue("invoice", Invoice(number=1), unique_key="k", connection=object())


class PlainStorage(backrun.MemoryStorage):
    capabilities = Capabilities()


def test_a_store_without_the_abilities_refuses_clearly() -> None:
    engine = backrun.Engine(PlainStorage(), middleware=[])

    @engine.handler(name="limited", max_concurrency=1)
    def limited(payload: Invoice) -> None:
        pass

    with pytest.raises(TypeError, match="unique"):
        engine.enqueue("limited", Invoice(number=1), unique_key="k")
    with pytest.raises(TypeError, match="limits"):
        engine.run_until_idle(timeout=5)


# -- limits ----------------------------------------------------------------------------


class CallPartner(backrun.Handler[Invoice]):
    name = "call_partner"
    max_concurrency = 2
    concurrency_key = staticmethod(lambda p: p.tenant)
    rate_limit = backrun.RateLimit(10, per=timedelta(seconds=1))

    def execute(self, payload: Invoice) -> None:
        pass


def test_class_attributes_declare_the_limits_and_jobs_carry_their_key() -> None:
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[])
    spec = engine.add_handler(CallPartner)
    assert spec.limits == backrun.limits.HandlerLimits(2, backrun.RateLimit(10, per=1))
    job = engine.enqueue(CallPartner, Invoice(number=1, tenant="t1"))
    assert job.limited
    assert job.concurrency_key == "t1"
    plain = make_engine().enqueue("invoice", Invoice(number=1))
    assert not plain.limited


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: backrun.RateLimit(0, per=1), ValueError),
        (lambda: backrun.RateLimit(1, per=0), ValueError),
        (lambda: backrun.RateLimit(1, per=float("inf")), ValueError),
        (lambda: backrun.RateLimit(1.5, per=1), TypeError),  # type: ignore[arg-type]
        (lambda: backrun.handler(max_concurrency=0), ValueError),
        (lambda: backrun.handler(concurrency_key=lambda p: "k"), ValueError),
        (lambda: make_engine().add_handler(CallPartner, max_concurrency=1), TypeError),
    ],
)
def test_bad_limits_are_refused_where_they_are_written(
    make: Callable[[], object], error: type
) -> None:
    with pytest.raises(error):
        make()


def test_a_concurrency_key_must_be_a_string() -> None:
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[])

    @engine.handler(name="keyed", max_concurrency=1, concurrency_key=lambda p: p.number)
    def keyed(payload: Invoice) -> None:
        pass

    with pytest.raises(TypeError):
        engine.enqueue("keyed", Invoice(number=1))


def test_max_concurrency_in_one_process_with_free_jobs_alongside() -> None:
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[], threads=6)
    lock = threading.Lock()
    running = {"now": 0, "peak": 0}

    @engine.handler(name="limited", max_concurrency=2)
    def limited(payload: Invoice) -> None:
        with lock:
            running["now"] += 1
            running["peak"] = max(running["peak"], running["now"])
        time.sleep(0.02)
        with lock:
            running["now"] -= 1

    @engine.handler(name="free")
    def free(payload: Invoice) -> None:
        pass

    ids = [engine.enqueue("limited", Invoice(number=i)).id for i in range(12)]
    ids += [engine.enqueue("free", Invoice(number=i)).id for i in range(12)]
    engine.run_until_idle(timeout=30)
    assert running["peak"] == 2
    assert all(engine.get(i).attempts == 1 for i in ids)  # type: ignore[union-attr]


def test_a_rate_limit_in_one_process_spreads_the_starts() -> None:
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[], threads=4)

    @engine.handler(name="rated", rate_limit=backrun.RateLimit(3, per=timedelta(seconds=0.3)))
    def rated(payload: Invoice) -> None:
        pass

    ids = [engine.enqueue("rated", Invoice(number=i)).id for i in range(9)]
    engine.run_until_idle(timeout=30)
    starts = sorted(engine.get(i).started_at for i in ids)  # type: ignore[union-attr,type-var]
    for first, fourth in zip(starts, starts[3:], strict=False):
        assert fourth - first >= timedelta(seconds=0.3)  # type: ignore[operator]
    assert starts[-1] - starts[0] >= timedelta(seconds=0.6)  # type: ignore[operator]


def test_a_schedules_ticks_of_a_limited_handler_are_limited() -> None:
    clock = FakeClock()
    engine = backrun.Engine(backrun.MemoryStorage(), clock=clock, middleware=[])
    engine.add_handler(CallPartner)
    engine.schedule(CallPartner, {"number": 1, "tenant": "t9"}, every=60, name="partner")
    clock.advance(60)
    Scheduler(engine, "test").run_once()
    (tick,) = engine.jobs()
    assert tick.limited
    assert tick.concurrency_key == "t9"


def test_a_discovered_function_keeps_the_limits_of_its_decorator(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "limited_jobs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "calls.py").write_text(
        "from datetime import timedelta\n"
        "from pydantic import BaseModel\n"
        "import backrun\n\n"
        "class Ping(BaseModel):\n"
        "    host: str\n\n"
        "@backrun.handler(name='ping', max_concurrency=3, concurrency_key=lambda p: p.host,\n"
        "                 rate_limit=backrun.RateLimit(5, per=timedelta(seconds=60)))\n"
        "def ping(payload: Ping) -> None:\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[])
    assert engine.add_handlers_from_package("limited_jobs") == ["ping"]
    spec = engine.registry.get("ping")
    assert spec is not None
    assert spec.limits == backrun.limits.HandlerLimits(3, backrun.RateLimit(5, per=60))
    assert engine.enqueue("ping", {"host": "a"}).concurrency_key == "a"
