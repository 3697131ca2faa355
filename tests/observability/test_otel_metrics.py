"""OtelMetricsMiddleware: the messaging instruments, read with InMemoryMetricReader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from backrun.context import JobContext
from backrun.jobs import Job
from backrun.observability import OtelMetricsMiddleware

from .support import claimed, make_ctx, make_job

SEND = {
    "messaging.system": "backrun",
    "messaging.operation.type": "send",
    "messaging.operation.name": "send",
    "messaging.destination.name": "mail",
    "backrun.job.handler": "emails.send",
}
PROCESS = {**SEND, "messaging.operation.type": "process", "messaging.operation.name": "process"}


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def mw(reader: InMemoryMetricReader) -> Iterator[OtelMetricsMiddleware]:
    provider = MeterProvider(metric_readers=[reader])
    yield OtelMetricsMiddleware(meter_provider=provider)
    provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, tuple[str, list[Any]]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, tuple[str, list[Any]]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "backrun"
            for metric in scope.metrics:
                found[metric.name] = (metric.unit or "", list(metric.data.data_points))
    return found


def test_sent_consumed_and_duration(
    mw: OtelMetricsMiddleware, reader: InMemoryMetricReader
) -> None:
    job = mw.enqueue(make_job(), lambda j: j)
    mw.enqueue(make_job(), lambda j: j)
    mw.process(make_ctx(claimed(job)), lambda c: None)

    found = points(reader)
    unit, (sent,) = found["messaging.client.sent.messages"]
    assert unit == "{message}"
    assert sent.value == 2
    assert dict(sent.attributes) == SEND
    unit, (consumed,) = found["messaging.client.consumed.messages"]
    assert unit == "{message}"
    assert consumed.value == 1
    assert dict(consumed.attributes) == PROCESS
    unit, (duration,) = found["messaging.process.duration"]
    assert unit == "s"
    assert duration.count == 1
    assert dict(duration.attributes) == PROCESS
    assert list(duration.explicit_bounds)[:2] == [0.005, 0.01]


def test_failures_carry_error_type(mw: OtelMetricsMiddleware, reader: InMemoryMetricReader) -> None:
    def boom(ctx: JobContext) -> None:
        raise ValueError("bad")

    def broken_store(job: Job) -> Job:
        raise OSError("disk full")

    with pytest.raises(ValueError, match="bad"):
        mw.process(make_ctx(claimed(make_job())), boom)
    with pytest.raises(OSError, match="disk full"):
        mw.enqueue(make_job(), broken_store)

    found = points(reader)
    _, (duration,) = found["messaging.process.duration"]
    assert dict(duration.attributes) == {**PROCESS, "error.type": "ValueError"}
    _, (sent,) = found["messaging.client.sent.messages"]
    assert dict(sent.attributes) == {**SEND, "error.type": "OSError"}
