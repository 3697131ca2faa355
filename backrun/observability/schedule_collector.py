"""Schedule gauges, read from the store at scrape time.

``backrun_schedule_last_tick_timestamp_seconds{schedule}`` is the tick time of
the latest tick whose job exists in the store, whichever process created it,
so every worker of a store reports the same value (aggregate with ``max``).
``backrun_schedule_interval_seconds{schedule}`` is the gap from the latest
tick to the next one, which the "missed its tick" alert compares against. A
schedule with no tick job yet has no last-tick sample.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backrun.clock import Clock
from backrun.schedules import Schedule

__all__ = ["ScheduleCollector", "ScheduleSource", "register_schedule_collector"]


class ScheduleSource(Protocol):
    """What the collector reads of an engine (:class:`~backrun.engine.Engine` is one)."""

    @property
    def clock(self) -> Clock:
        """The engine's clock."""
        ...

    def schedules(self) -> list[Schedule]:
        """The schedules with their latest existing tick."""
        ...


log = logging.getLogger("backrun.observability")

_lock = threading.Lock()
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, ScheduleCollector] = (
    weakref.WeakKeyDictionary()
)


class ScheduleCollector(Collector):
    """Reports the schedules of every engine added to it (held weakly)."""

    def __init__(self) -> None:
        self._engines: weakref.WeakSet[ScheduleSource] = weakref.WeakSet()

    def add(self, engine: ScheduleSource) -> None:
        """Report ``engine``'s schedules."""
        self._engines.add(engine)

    def describe(self) -> list[Metric]:
        """The families, without touching any store."""
        return list(self._families())

    def collect(self) -> list[Metric]:
        """Read each schedule's latest existing tick from its engine's store."""
        last: dict[str, float] = {}
        interval: dict[str, float] = {}
        for engine in list(self._engines):
            try:
                now = engine.clock.now()
                schedules = engine.schedules()
            except Exception:
                log.warning("metrics: could not read the schedules of %r", engine, exc_info=True)
                continue
            for s in schedules:
                latest = s.latest_tick(now)
                gap = (s.next_tick(latest) - latest).total_seconds()
                interval[s.name] = max(interval.get(s.name, 0.0), gap)
                if s.last_tick_at is not None:
                    stamp = s.last_tick_at.timestamp()
                    last[s.name] = max(last.get(s.name, stamp), stamp)
        last_family, interval_family = self._families()
        for name in sorted(last):
            last_family.add_metric([name], last[name])
        for name in sorted(interval):
            interval_family.add_metric([name], interval[name])
        return [last_family, interval_family]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        last = GaugeMetricFamily(
            "backrun_schedule_last_tick_timestamp_seconds",
            "Tick time of each schedule's latest tick whose job exists (read at scrape time).",
            labels=["schedule"],
        )
        interval = GaugeMetricFamily(
            "backrun_schedule_interval_seconds",
            "Seconds from each schedule's latest tick to its next one.",
            labels=["schedule"],
        )
        return last, interval


def register_schedule_collector(
    engine: ScheduleSource, *, registry: CollectorRegistry | None = None
) -> ScheduleCollector:
    """Report ``engine``'s schedules in ``registry`` (default: the global one)."""
    registry = registry if registry is not None else REGISTRY
    with _lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _collectors[registry] = ScheduleCollector()
            registry.register(collector)
    collector.add(engine)
    return collector
