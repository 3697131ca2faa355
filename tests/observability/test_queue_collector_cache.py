"""The queue collector reads each store at most once per cache period, however many scrape."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from backrun.jobs import JobState
from backrun.observability import register_queue_collector
from backrun.observability.queue_collector import QueueCollector
from backrun.storage.memory import MemoryStorage
from backrun.testing import FakeClock

from .support import make_job


class Counting(MemoryStorage):
    """A memory store that counts its reads and can hold them (a slow database)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.gate = threading.Event()
        self.gate.set()
        self.reading = threading.Event()

    def counts(self) -> dict[tuple[str, JobState], int]:
        self.reads += 1
        self.reading.set()
        self.gate.wait(10)
        return super().counts()


class Ticks:
    """A fake monotonic clock for the cache."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def queued(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("backrun_queue_jobs", {"queue": "mail", "state": "queued"})


def test_scrapes_within_the_cache_period_share_one_read_and_the_lag_stays_current() -> None:
    clock, store, ticks = FakeClock(), Counting(), Ticks()
    store.add(make_job(queue="mail", run_at=clock.now() - timedelta(seconds=30)))
    collector = QueueCollector(cache_seconds=2.0, monotonic=ticks)
    collector.add(store, clock)
    registry = CollectorRegistry()
    registry.register(collector)
    assert queued(registry) == 1
    store.add(make_job(queue="mail", run_at=clock.now()))
    clock.advance(timedelta(seconds=10))
    ticks.now += 1.9
    for _ in range(50):
        assert queued(registry) == 1  # cached
    lag = {"queue": "mail"}
    assert registry.get_sample_value("backrun_queue_oldest_ready_age_seconds", lag) == 40
    assert store.reads == 1
    ticks.now += 0.2
    assert queued(registry) == 2  # the period is over: read again
    assert store.reads == 2


def test_a_scrape_storm_costs_the_store_one_read() -> None:
    store = Counting()
    store.add(make_job(queue="mail"))
    registry = CollectorRegistry()
    register_queue_collector(store, registry=registry, cache_seconds=5.0)
    store.gate.clear()  # the first read is slow; the others arrive meanwhile
    results: list[float | None] = []
    threads = [threading.Thread(target=lambda: results.append(queued(registry))) for _ in range(20)]
    for thread in threads:
        thread.start()
    assert store.reading.wait(10)
    store.gate.set()
    for thread in threads:
        thread.join(10)
    assert results == [1.0] * 20
    assert store.reads == 1


def test_cache_zero_reads_on_every_scrape_and_negative_is_refused() -> None:
    store = Counting()
    collector = QueueCollector(cache_seconds=0)
    collector.add(store)
    collector.collect()
    collector.collect()
    assert store.reads == 2
    with pytest.raises(ValueError):
        QueueCollector(cache_seconds=-1)


def test_a_failed_read_is_not_cached() -> None:
    class Flaky(Counting):
        def counts(self) -> dict[tuple[str, JobState], int]:
            if self.reads == 0:
                self.reads += 1
                raise OSError("database away")
            return super().counts()

    store = Flaky()
    store.add(make_job(queue="mail"))
    registry = CollectorRegistry()
    registry.register(collector := QueueCollector(cache_seconds=60))
    collector.add(store)
    assert queued(registry) is None  # skipped, not fatal
    assert queued(registry) == 1  # read again at once
