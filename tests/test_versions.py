"""Versioned payloads: upcasting older jobs, and leaving newer ones for a newer worker.

Two engines on one store stand for two deploys: each registers its own
version of the handler under the same name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import backrun
from backrun.jobs import Job, JobState
from backrun.storage.base import Storage
from backrun.testing import FakeClock
from backrun.versions import NEWER_VERSION_DELAY
from tests.storage.conftest import BACKENDS


class V1(BaseModel):
    w: int


class V2(BaseModel):
    width: int
    height: int


class V3(BaseModel):
    width: int
    height: int
    unit: str


class ResizeV1(backrun.Handler[V1]):
    name = "resize"

    def execute(self, payload: V1) -> str:
        return f"v1 {payload.w}"


class ResizeV2(backrun.Handler[V2]):
    name = "resize"
    version = 2

    @classmethod
    def upcast(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        return {"width": data["w"], "height": data["w"]}

    def execute(self, payload: V2) -> str:
        return f"v2 {payload.width}x{payload.height}"


upcasts: list[int] = []


class ResizeV3(backrun.Handler[V3]):
    name = "resize"
    version = 3

    @classmethod
    def upcast(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        upcasts.append(version)
        if version < 2:
            data = {"width": data["w"], "height": data["w"]}
        if version < 3:
            data = {**data, "unit": "px"}
        return data

    def execute(self, payload: V3) -> str:
        return f"v3 {payload.width}x{payload.height}{payload.unit}"


class Other(backrun.Handler[V1]):
    name = "other"

    def execute(self, payload: V1) -> int:
        return payload.w


class Deferrals(backrun.Middleware):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def job_deferred(self, job: Job, reason: str) -> None:
        self.seen.append((job.id, reason))


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    storage = BACKENDS[request.param](tmp_path)
    try:
        yield storage
    finally:
        storage.close()


def deploy(
    store: Storage, clock: FakeClock, *handlers: type[backrun.Handler[Any]], **kw: Any
) -> backrun.Engine:
    engine = backrun.Engine(store, clock=clock, threads=2, **kw)
    for handler in handlers:
        engine.add_handler(handler)
    return engine


def test_the_version_is_stored_with_each_job(store: Storage) -> None:
    clock = FakeClock()
    assert deploy(store, clock, ResizeV1, middleware=[]).enqueue("resize", {"w": 1}).version == 1
    job = deploy(store, clock, ResizeV3, middleware=[]).enqueue(
        "resize", {"width": 1, "height": 2, "unit": "mm"}
    )
    assert job.version == 3
    assert store.get(job.id).version == 3  # type: ignore[union-attr]


def test_an_older_job_is_upcast_from_1_to_3_before_validation(store: Storage) -> None:
    clock = FakeClock()
    upcasts.clear()
    v1 = deploy(store, clock, ResizeV1, middleware=[]).enqueue("resize", {"w": 4})
    v2 = deploy(store, clock, ResizeV2, middleware=[]).enqueue("resize", {"width": 2, "height": 3})
    new = deploy(store, clock, ResizeV3, Other, middleware=[])
    new.run_until_idle()
    assert new.result(v1.id, timeout=5) == "v3 4x4px"
    assert new.result(v2.id, timeout=5) == "v3 2x3px"
    assert sorted(upcasts) == [1, 2]


def test_a_newer_job_is_left_for_a_newer_worker(
    store: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    newer = deploy(store, clock, ResizeV2, middleware=[]).enqueue(
        "resize", {"width": 2, "height": 3}
    )
    heard = Deferrals()
    old = deploy(store, clock, ResizeV1, Other, middleware=[heard])
    others = [old.enqueue(Other, {"w": n}) for n in range(3)]
    with caplog.at_level(logging.INFO, logger="backrun"):
        old.run_until_idle()
    # The old worker ran everything else ...
    assert [old.result(job.id, timeout=5) for job in others] == [0, 1, 2]
    # ... and gave the newer job back: not failed, not charged, due again later.
    left = store.get(newer.id)
    assert left is not None
    assert left.state is JobState.SCHEDULED
    assert (left.attempts, left.errors, left.version) == (0, (), 2)
    assert left.run_at == clock.now() + NEWER_VERSION_DELAY
    assert heard.seen == [(newer.id, "newer_version")]
    lines = [r.getMessage() for r in caplog.records if newer.id in r.getMessage()]
    assert len(lines) == 1
    assert "payload version 2; this worker knows version 1" in lines[0]
    # Once the newer deploy's worker looks, it runs it.
    clock.advance(NEWER_VERSION_DELAY)
    new = deploy(store, clock, ResizeV2, Other, middleware=[])
    new.run_until_idle()
    assert new.result(newer.id, timeout=5) == "v2 2x3"
    assert store.get(newer.id).attempts == 1  # type: ignore[union-attr]


def test_the_deferral_is_counted_by_the_metrics_middleware(store: Storage) -> None:
    from prometheus_client import CollectorRegistry

    from backrun.observability.metrics import MetricsMiddleware

    clock = FakeClock()
    job = deploy(store, clock, ResizeV2, middleware=[]).enqueue("resize", {"width": 1, "height": 1})
    registry = CollectorRegistry()
    old = deploy(store, clock, ResizeV1, middleware=[MetricsMiddleware(registry=registry)])
    old.run_until_idle()
    labels = {"queue": job.queue, "handler": "resize", "reason": "newer_version"}
    assert registry.get_sample_value("backrun_jobs_deferred_total", labels) == 1.0


def test_a_payload_failing_validation_at_run_time_goes_dead_at_once(store: Storage) -> None:
    clock = FakeClock()
    job = deploy(store, clock, ResizeV1, middleware=[]).enqueue("resize", {"w": 1})

    class Changed(backrun.Handler[V2]):  # changed the model without raising the version
        name = "resize"

        def execute(self, payload: V2) -> None:
            raise AssertionError("never runs")

    new = deploy(store, clock, Changed, middleware=[])
    new.run_until_idle()
    dead = new.wait(job.id, timeout=5)
    assert dead.state is JobState.DEAD
    assert dead.attempts == 1
    assert dead.last_error is not None
    assert "does not fit handler 'resize'" in dead.last_error.message
    assert "width" in dead.last_error.message


def test_a_failing_upcast_is_final(store: Storage) -> None:
    clock = FakeClock()
    job = deploy(store, clock, ResizeV1, middleware=[]).enqueue("resize", {"w": 1})

    class Broken(ResizeV2):
        name = "resize"

        @classmethod
        def upcast(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
            raise KeyError("w2")

    new = deploy(store, clock, Broken, middleware=[])
    new.run_until_idle()
    dead = new.wait(job.id, timeout=5)
    assert dead.state is JobState.DEAD
    assert dead.attempts == 1
    assert "could not upcast a version 1 payload to version 2" in dead.last_error.message  # type: ignore[union-attr]


def test_a_version_must_be_a_positive_int() -> None:
    class Bad(ResizeV1):
        name = "bad"
        version = 0

    with pytest.raises(TypeError, match="version must be an int >= 1"):
        backrun.Engine(backrun.MemoryStorage(), middleware=[]).add_handler(Bad)
