"""``ctx.progress``: persisted while running, throttled, on spans, in the CLI; on every store."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

import backrun
from backrun.cli import main as cli
from backrun.jobs import Job, JobState, Progress
from backrun.observability import TracingMiddleware
from backrun.storage.base import Storage
from backrun.storage.memory import MemoryStorage
from tests.helpers import wait_until
from tests.storage.conftest import BACKENDS


class Tiles(BaseModel):
    count: int


reported = threading.Event()
proceed = threading.Event()


class Render(backrun.Handler[Tiles]):
    name = "render"

    def execute(self, payload: Tiles, ctx: backrun.JobContext) -> int:
        ctx.progress(3, total=payload.count, message="tiles")
        reported.set()
        assert proceed.wait(10)
        return payload.count


class Spin(backrun.Handler[Tiles]):
    name = "spin"

    def execute(self, payload: Tiles, ctx: backrun.JobContext) -> None:
        for n in range(payload.count):
            ctx.progress(n, message=f"item {n}")


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    storage = BACKENDS[request.param](tmp_path)
    reported.clear()
    proceed.clear()
    try:
        yield storage
    finally:
        proceed.set()
        storage.close()


def run_cli(engine: backrun.Engine, *argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(list(argv), engine=engine) == 0
    return out.getvalue()


def test_progress_is_visible_while_running_and_kept_after(store: Storage) -> None:
    engine = backrun.Engine(store, middleware=[])
    engine.add_handler(Render)
    job = engine.enqueue(Render, {"count": 10})
    with engine.running():
        assert reported.wait(10)
        wait_until(lambda: engine.get(job.id).progress is not None, what="progress stored")  # type: ignore[union-attr]
        running = engine.get(job.id)
        assert running is not None
        assert running.state is JobState.RUNNING
        assert running.progress == Progress(3, 10, "tiles")
        assert running.progress == (3, 10, "tiles")
        shown = run_cli(engine, "jobs", "show", job.id)
        assert "progress:  3/10 tiles" in shown
        listed = json.loads(run_cli(engine, "jobs", "list", "--json"))
        assert listed[0]["progress"] == {"done": 3, "total": 10, "message": "tiles"}
        proceed.set()
        done = engine.wait(job.id, timeout=10)
    assert done.progress == Progress(3, 10, "tiles")
    assert "result:    10" in run_cli(engine, "jobs", "show", job.id)


class CountingProgress(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[Progress] = []

    def record_progress(self, job: Job, progress: Progress) -> None:
        self.writes.append(progress)
        super().record_progress(job, progress)


def test_progress_writes_are_throttled_to_one_a_second() -> None:
    store = CountingProgress()
    engine = backrun.Engine(store, middleware=[])
    engine.add_handler(Spin)
    job = engine.enqueue(Spin, {"count": 10_000})
    engine.run_until_idle()
    assert 1 <= len(store.writes) <= 3  # the first at once, then at most one a second
    assert store.writes[0] == Progress(0, None, "item 0")
    # The last value is stored with the outcome, whatever the throttle skipped.
    assert engine.get(job.id).progress == Progress(9999, None, "item 9999")  # type: ignore[union-attr]


def test_progress_refuses_what_is_not_a_finite_number() -> None:
    engine = backrun.Engine(MemoryStorage(), middleware=[])
    ctx = backrun.JobContext(Job(id="0" * 32, handler="h", payload={}), 1, "w", None, engine)
    for bad in (float("nan"), float("inf"), "3", True):
        with pytest.raises(ValueError, match="finite numbers"):
            ctx.progress(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite numbers"):
        ctx.progress(1, total=float("inf"))
    ctx.progress(1.5, total=3)
    assert ctx.latest_progress == Progress(1.5, 3, None)


def test_progress_is_an_event_on_the_attempts_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    engine = backrun.Engine(MemoryStorage(), middleware=[TracingMiddleware(provider)])

    @engine.handler(name="steps")
    def steps(payload: Tiles, ctx: backrun.JobContext) -> None:
        ctx.progress(1, total=2, message="half")
        ctx.progress(2, total=2)  # done == total: written at once despite the throttle

    engine.enqueue("steps", {"count": 2})
    engine.run_until_idle()
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("process")]
    events = [(e.name, dict(e.attributes or {})) for e in span.events]
    assert events == [
        (
            "progress",
            {
                "backrun.progress.done": 1,
                "backrun.progress.total": 2,
                "backrun.progress.message": "half",
            },
        ),
        ("progress", {"backrun.progress.done": 2, "backrun.progress.total": 2}),
    ]


def test_the_dashboard_shows_progress_and_result() -> None:
    from backrun.web import Dashboard
    from tests.web.client import Client

    engine = backrun.Engine(MemoryStorage(), middleware=[])

    @engine.handler(name="steps")
    def steps(payload: Tiles, ctx: backrun.JobContext) -> dict[str, int]:
        ctx.progress(payload.count, total=payload.count, message="tiles")
        return {"tiles": payload.count}

    job = engine.enqueue("steps", {"count": 4})
    engine.run_until_idle()
    html = Client(Dashboard(engine)).get(f"/jobs/{job.id}").text  # type: ignore[arg-type]
    assert "<dt>Progress</dt><dd>4 of 4 · tiles</dd>" in html
    assert "&#34;tiles&#34;: 4" in html or "&quot;tiles&quot;: 4" in html
