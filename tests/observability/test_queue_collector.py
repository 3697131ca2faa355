"""The scrape-time queue collector and the /metrics endpoint."""

from __future__ import annotations

import urllib.request
from datetime import timedelta

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from backrun.jobs import JobState
from backrun.observability import MetricsMiddleware, register_queue_collector, serve_metrics
from backrun.storage.memory import MemoryStorage
from backrun.testing import FakeClock

from .support import make_job


def fill(storage: MemoryStorage, clock: FakeClock) -> None:
    now = clock.now()
    storage.add(make_job(queue="mail", run_at=now - timedelta(seconds=30)))
    storage.add(make_job(queue="mail", run_at=now - timedelta(seconds=5)))
    storage.add(make_job(queue="mail", run_at=now + timedelta(hours=1), state=JobState.SCHEDULED))
    storage.add(make_job(queue="idle", run_at=now + timedelta(hours=1), state=JobState.SCHEDULED))


def test_depth_by_state_and_oldest_ready_age() -> None:
    clock, storage, registry = FakeClock(), MemoryStorage(), CollectorRegistry()
    fill(storage, clock)
    register_queue_collector(storage, registry=registry, clock=clock)

    def depth(queue: str, state: str) -> float | None:
        return registry.get_sample_value("backrun_queue_jobs", {"queue": queue, "state": state})

    def age(queue: str) -> float | None:
        return registry.get_sample_value("backrun_queue_oldest_ready_age_seconds", {"queue": queue})

    assert depth("mail", "queued") == 2
    assert depth("mail", "scheduled") == 1
    assert depth("mail", "running") == 0  # every state is reported, zeros included
    assert depth("idle", "scheduled") == 1
    assert age("mail") == 30
    assert age("idle") == 0  # nothing due: no lag, but the series exists
    clock.advance(timedelta(seconds=10))
    assert age("mail") == 40  # read at scrape time


def test_registering_a_store_twice_reports_it_once() -> None:
    clock, storage, registry = FakeClock(), MemoryStorage(), CollectorRegistry()
    fill(storage, clock)
    first = register_queue_collector(storage, registry=registry, clock=clock)
    second = register_queue_collector(storage, registry=registry, clock=clock)
    assert first is second
    labels = {"queue": "mail", "state": "queued"}
    assert registry.get_sample_value("backrun_queue_jobs", labels) == 2


def test_several_stores_in_one_registry_are_summed() -> None:
    clock, registry = FakeClock(), CollectorRegistry()
    a, b = MemoryStorage(), MemoryStorage()
    fill(a, clock)
    fill(b, clock)
    register_queue_collector(a, registry=registry, clock=clock)
    register_queue_collector(b, registry=registry, clock=clock)
    labels = {"queue": "mail", "state": "queued"}
    assert registry.get_sample_value("backrun_queue_jobs", labels) == 4


def test_a_failing_store_is_skipped_not_fatal() -> None:
    class Broken(MemoryStorage):
        def counts(self) -> dict[tuple[str, JobState], int]:
            raise OSError("store down")

    registry = CollectorRegistry()
    register_queue_collector(Broken(), registry=registry)
    names = {f.name for f in registry.collect()}
    assert "backrun_queue_jobs" in names  # the family, without samples


def test_registering_does_not_touch_the_store() -> None:
    class Counting(MemoryStorage):
        calls = 0

        def counts(self) -> dict[tuple[str, JobState], int]:
            Counting.calls += 1
            return super().counts()

    register_queue_collector(Counting(), registry=CollectorRegistry(auto_describe=True))
    assert Counting.calls == 0


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def test_serve_metrics_exposes_the_store_and_the_middleware_metrics() -> None:
    clock, storage, registry = FakeClock(), MemoryStorage(), CollectorRegistry()
    fill(storage, clock)
    MetricsMiddleware(registry=registry).enqueue(make_job(), lambda j: j)
    with serve_metrics(storage, 0, registry=registry) as server:
        assert server.addr == "127.0.0.1"
        assert server.url.startswith("http://127.0.0.1:")
        text = fetch(server.url)
    server.close()  # a second close is harmless
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"backrun_queue_jobs", "backrun_jobs_enqueued", "backrun_job_duration_seconds"} <= names
    # Closed: the store is no longer reported.
    queued = {"queue": "mail", "state": "queued"}
    assert registry.get_sample_value("backrun_queue_jobs", queued) is None


def test_serve_metrics_finds_the_engines_registry() -> None:
    import backrun

    registry = CollectorRegistry()
    engine = backrun.Engine(MemoryStorage(), middleware=[MetricsMiddleware(registry=registry)])

    @engine.handler(name="noop")
    def noop(payload: dict[str, int]) -> None:
        return None

    engine.enqueue("noop", {})
    with serve_metrics(engine, 0) as server:
        assert server.registry is registry
        text = fetch(server.url)
    assert 'backrun_jobs_enqueued_total{handler="noop",queue="default"} 1.0' in text
    assert 'backrun_queue_jobs{queue="default",state="queued"} 1.0' in text
    engine.close()
