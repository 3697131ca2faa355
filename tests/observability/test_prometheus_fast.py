"""The per-attempt adds and observes give the samples prometheus_client's own methods give."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from backrun.observability._prometheus_fast import adder, observer

BUCKETS = (0.005, 0.01, 0.5, 1.0, 30.0)
AMOUNTS = (0.0, 0.004, 0.005, 0.0051, 0.01, 0.3, 0.5, 1.0, 29.9, 30.0, 31.0, 1e9, -1.0, math.nan)


def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    ]


def same(a: object, b: object) -> bool:
    return repr(a) == repr(b)  # NaN sums compare equal by their repr


def test_observer_fills_the_buckets_and_sum_as_observe_does() -> None:
    mine, theirs = CollectorRegistry(), CollectorRegistry()
    fast = Histogram("h", "h", ["q"], buckets=BUCKETS, registry=mine).labels("a")
    slow = Histogram("h", "h", ["q"], buckets=BUCKETS, registry=theirs).labels("a")
    observe = observer(fast)
    for amount in AMOUNTS:
        observe(amount)
        slow.observe(amount)
        assert same(samples(mine), samples(theirs)), amount


def test_adder_adds_as_inc_and_dec_do() -> None:
    mine, theirs = CollectorRegistry(), CollectorRegistry()
    fast_counter = Counter("c", "c", ["q"], registry=mine).labels("a")
    slow_counter = Counter("c", "c", ["q"], registry=theirs).labels("a")
    fast_gauge = Gauge("g", "g", ["q"], registry=mine).labels("a")
    slow_gauge = Gauge("g", "g", ["q"], registry=theirs).labels("a")
    add_counter, add_gauge = adder(fast_counter), adder(fast_gauge)
    for _ in range(3):
        add_counter(1.0)
        slow_counter.inc()
        add_gauge(1.0)
        slow_gauge.inc()
    add_gauge(-1.0)
    slow_gauge.dec()
    assert samples(mine) == samples(theirs)


class _Opaque:
    """A metric without prometheus_client's value holders: its own methods are used."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def inc(self, amount: float = 1) -> None:
        self.calls.append(("inc", amount))

    def observe(self, amount: float) -> None:
        self.calls.append(("observe", amount))


def test_a_metric_laid_out_otherwise_gets_its_own_methods() -> None:
    metric = _Opaque()
    adder(metric)(1.0)  # type: ignore[arg-type]
    observer(metric)(2.0)  # type: ignore[arg-type]
    assert metric.calls == [("inc", 1.0), ("observe", 2.0)]
