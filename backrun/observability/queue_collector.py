"""Queue depth and lag, read from the store at scrape time.

One :class:`QueueCollector` serves each Prometheus registry; it reports every
store added to it. Registering it never touches a store: the families are
described without samples, and the store is read only when scraped. What a
store answered is kept for ``cache_seconds`` (2 s by default), and scrapes that
arrive together share one read, so a storm of scrapes (many Prometheus
replicas, a dashboard refreshing) costs the store one read per period.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backrun.clock import Clock, SystemClock
from backrun.jobs import JobState
from backrun.storage.base import Storage

__all__ = ["DEFAULT_CACHE_SECONDS", "QueueCollector", "register_queue_collector"]

log = logging.getLogger("backrun.observability")

DEFAULT_CACHE_SECONDS = 2.0
"""How long a store's answer serves later scrapes."""

_Reading = tuple[dict[tuple[str, JobState], int], dict[str, datetime], frozenset[str]]

_lock = threading.Lock()
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, QueueCollector] = (
    weakref.WeakKeyDictionary()
)


class QueueCollector(Collector):
    """Reads the stores at scrape time: ``backrun_queue_jobs{queue,state}`` and lag.

    ``backrun_queue_oldest_ready_age_seconds{queue}`` is how long the oldest
    due job of each queue has waited past its ``run_at`` (0 when nothing is
    due). Every state of every known queue is reported, zeros included.
    With several stores in one registry, counts are summed and the age is the
    largest. Every process serving a store reports the same numbers, so
    aggregate these with ``max`` rather than ``sum`` across instances.
    """

    def __init__(
        self,
        *,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create an empty collector.

        Args:
            cache_seconds: how long one read of a store serves later scrapes
                (0 reads the store on every scrape). The lag is still computed
                at scrape time from the cached oldest ``run_at``.
            monotonic: the time source of the cache (a test's fake).
        """
        if cache_seconds < 0:
            raise ValueError("cache_seconds must not be negative")
        self.cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()  # one read of the stores at a time
        self._sources: dict[int, tuple[Storage, Clock]] = {}
        self._cache: dict[int, tuple[float, _Reading]] = {}

    def add(self, storage: Storage, clock: Clock | None = None) -> None:
        """Report ``storage`` (once, however often it is added)."""
        with self._lock:
            self._sources.setdefault(id(storage), (storage, clock or SystemClock()))

    def remove(self, storage: Storage) -> None:
        """Stop reporting ``storage``."""
        with self._lock:
            self._sources.pop(id(storage), None)
            self._cache.pop(id(storage), None)

    def describe(self) -> list[Metric]:
        """The families, without touching any store (so registering is free)."""
        return [*self._families(), _paused_family()]

    def collect(self) -> list[Metric]:
        """Ask each store for its counts and oldest due job."""
        with self._lock:
            sources = list(self._sources.values())
        counts: dict[tuple[str, str], int] = {}
        ages: dict[str, float] = {}
        paused: set[str] = set()
        for storage, clock in sources:
            now = clock.now()
            reading = self._read(storage, now)
            if reading is None:
                continue
            by_state, oldest, paused_here = reading
            paused |= paused_here
            for (queue, state), n in by_state.items():
                key = (queue, JobState(state).value)
                counts[key] = counts.get(key, 0) + n
                ages.setdefault(queue, 0.0)
            for queue, run_at in oldest.items():
                ages[queue] = max(ages.get(queue, 0.0), _age(now, run_at))
        depth, lag = self._families()
        paused_family = _paused_family()
        for queue in sorted(ages.keys() | paused):
            paused_family.add_metric([queue], 1.0 if queue in paused else 0.0)
        for queue in sorted(ages):
            for state in JobState:
                depth.add_metric([queue, state.value], counts.get((queue, state.value), 0))
            lag.add_metric([queue], ages[queue])
        return [depth, lag, paused_family]

    def _read(self, storage: Storage, now: datetime) -> _Reading | None:
        """The store's counts, oldest due jobs and paused queues, from the cache while fresh."""
        key = id(storage)
        with self._read_lock:  # scrapes arriving together wait for one read
            cached = self._cache.get(key)
            if cached is not None and self._monotonic() - cached[0] < self.cache_seconds:
                return cached[1]
            try:
                reading = (storage.counts(), storage.oldest_due(now=now), storage.paused_queues())
            except Exception:
                log.warning("metrics: could not read the store %r", storage, exc_info=True)
                return None
            with self._lock:
                if key in self._sources:
                    self._cache[key] = (self._monotonic(), reading)
            return reading

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "backrun_queue_jobs",
            "Jobs in the store, by queue and state (read at scrape time).",
            labels=["queue", "state"],
        )
        lag = GaugeMetricFamily(
            "backrun_queue_oldest_ready_age_seconds",
            "How long the oldest due job of each queue has waited past its run_at.",
            labels=["queue"],
        )
        return depth, lag


def _paused_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "backrun_queue_paused",
        "1 while the queue is paused (workers take none of its jobs), else 0.",
        labels=["queue"],
    )


def _age(now: datetime, run_at: datetime) -> float:
    seconds = (now - run_at).total_seconds()
    return seconds if seconds > 0.0 else 0.0


def register_queue_collector(
    storage: Storage,
    *,
    registry: CollectorRegistry | None = None,
    clock: Clock | None = None,
    cache_seconds: float = DEFAULT_CACHE_SECONDS,
) -> QueueCollector:
    """Report ``storage``'s queues in ``registry`` (default: the global one).

    One :class:`QueueCollector` serves each registry; adding a store twice is
    harmless. Use this when your application serves ``/metrics`` itself.
    ``cache_seconds`` applies when this call creates the registry's collector.
    """
    registry = registry if registry is not None else REGISTRY
    with _lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _collectors[registry] = QueueCollector(cache_seconds=cache_seconds)
            registry.register(collector)
    collector.add(storage, clock)
    return collector
