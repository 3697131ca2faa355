"""Per-job cost of backrun's observability layers, through the engine on MemoryStorage.

Each configuration enqueues N no-op jobs from one thread, then drains them with
``run_until_idle`` (4 slot threads). The cost of a configuration is its time
per job (enqueue + drain) minus that of the engine with no middleware, as the
median over interleaved repeats (so machine drift hits all alike). Both wall
time and process CPU time (all threads, the exporter's included) are given;
CPU time is the steadier figure on a shared machine.

Configurations: each layer alone and the default stack, without an
OpenTelemetry SDK (the API's no-op) and with one (a ``TracerProvider`` with a
``BatchSpanProcessor`` feeding an exporter that discards, and a
``MeterProvider`` with a periodic reader), so the figures are backrun's cost,
not a collector's; and "sdk floor": the same two spans, attributes and
propagation made with the SDK directly, without backrun (what any
instrumentation of a job must pay).

Usage: python benchmarks/observability_overhead.py [--jobs 20000] [--repeat 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

import backrun
from backrun.jobs import new_job_id
from backrun.middleware import compose_enqueue, compose_process, overrides
from backrun.observability import MetricsMiddleware, OtelMetricsMiddleware, TracingMiddleware


class Empty(BaseModel):
    n: int = 0


def noop_handler(payload: Empty) -> None:
    return None


class DiscardSpans(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class DiscardMetrics(MetricExporter):
    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def sdk_tracer(ratio: float = 1.0) -> TracerProvider:
    sampler = ParentBased(TraceIdRatioBased(ratio)) if ratio < 1.0 else None
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(DiscardSpans()))
    return provider


def sdk_meter() -> MeterProvider:
    reader = PeriodicExportingMetricReader(DiscardMetrics(), export_interval_millis=1000)
    return MeterProvider(metric_readers=[reader])


Stack = Callable[[], Sequence[backrun.Middleware]]

STACKS: dict[str, Stack] = {
    "off": list,
    "tracing, no SDK": lambda: [TracingMiddleware()],
    "prometheus metrics": lambda: [MetricsMiddleware(CollectorRegistry())],
    "otel metrics, no SDK": lambda: [OtelMetricsMiddleware()],
    "default stack, no SDK": lambda: [
        TracingMiddleware(),
        MetricsMiddleware(CollectorRegistry()),
        OtelMetricsMiddleware(),
    ],
    "tracing, SDK + batch": lambda: [TracingMiddleware(sdk_tracer())],
    "tracing, SDK 10% sampled": lambda: [TracingMiddleware(sdk_tracer(0.1))],
    "tracing SDK + prometheus": lambda: [
        TracingMiddleware(sdk_tracer()),
        MetricsMiddleware(CollectorRegistry()),
    ],
    "otel metrics, SDK": lambda: [OtelMetricsMiddleware(sdk_meter())],
    "default stack, SDK + batch": lambda: [
        TracingMiddleware(sdk_tracer()),
        MetricsMiddleware(CollectorRegistry()),
        OtelMetricsMiddleware(sdk_meter()),
    ],
}


class SdkFloor(backrun.Middleware):
    """The spans TracingMiddleware makes, made with the SDK directly (no bookkeeping)."""

    def __init__(self) -> None:
        self.tracer = sdk_tracer().get_tracer("floor")

    def enqueue(self, job: backrun.Job, call_next: Callable[[backrun.Job], backrun.Job]) -> Any:
        attributes = {
            "messaging.system": "backrun",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": job.queue,
            "backrun.job.handler": job.handler,
            "messaging.message.id": job.id,
        }
        span = self.tracer.start_span("send", kind=SpanKind.PRODUCER, attributes=attributes)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        job = call_next(job.replace(headers=carrier))
        span.end()
        return job

    def process(self, ctx: backrun.JobContext, call_next: Callable[[Any], None]) -> None:
        job = ctx.job
        attributes: dict[str, str | int] = {
            "messaging.system": "backrun",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": job.queue,
            "backrun.job.handler": job.handler,
            "messaging.message.id": job.id,
            "messaging.client.id": ctx.worker_id,
            "backrun.job.attempt": ctx.attempt,
        }
        parent = propagate.extract(job.headers)
        span = self.tracer.start_span(
            "process", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        call_next(ctx)
        span.end()


STACKS["sdk floor (no backrun code)"] = lambda: [SdkFloor()]


def seconds_per_job(jobs: int, stack: Stack) -> tuple[float, float]:
    """Wall and CPU seconds per job."""
    engine = backrun.Engine(backrun.MemoryStorage(), threads=4, middleware=stack())
    engine.add_handler(noop_handler, name="noop")
    payload = Empty()
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(jobs):
        engine.enqueue("noop", payload)
    done = engine.run_until_idle(timeout=600)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert done == jobs, (done, jobs)
    engine.close()
    return elapsed / jobs, cpu / jobs


def hooks_seconds_per_job(jobs: int, stack: Stack) -> float:
    """CPU seconds per job of the hooks alone, called directly in one thread (no engine).

    Each job goes through the enqueue chain, the process chain and
    ``attempt_finished`` exactly as the engine and worker call them; the jobs
    and contexts are built beforehand, so only the middleware is timed.
    """
    layers = list(stack())
    enqueue = compose_enqueue(layers, lambda job: job)
    process = compose_process(layers, lambda ctx: None)
    finished = [m for m in layers if overrides(m, "attempt_finished")]
    now = datetime.now(UTC)
    engine: Any = None
    work = []
    for _ in range(jobs):
        job = backrun.Job(id=new_job_id(), handler="noop", payload={}, run_at=now, created_at=now)
        work.append(job)
    started = time.process_time()
    for job in work:
        sent = enqueue(job)
        running = sent.replace(state=backrun.JobState.RUNNING, attempts=1, started_at=now)
        ctx = backrun.JobContext(running, 1, "bench-1-00000000", None, engine)
        process(ctx)
        done = running.replace(state=backrun.JobState.SUCCEEDED)
        for layer in finished:
            layer.attempt_finished(ctx, done, None)
    return (time.process_time() - started) / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    wall: dict[str, list[float]] = {name: [] for name in STACKS}
    cpu: dict[str, list[float]] = {name: [] for name in STACKS}
    seconds_per_job(2000, STACKS["default stack, SDK + batch"])  # warm-up
    for _ in range(args.repeat):
        for name, stack in STACKS.items():
            w, c = seconds_per_job(args.jobs, stack)
            wall[name].append(w)
            cpu[name].append(c)

    wall_off, cpu_off = statistics.median(wall["off"]), statistics.median(cpu["off"])
    print(f"{args.jobs:,} no-op jobs (enqueue + drain), median of {args.repeat}, µs per job")
    header = ("configuration", "wall", "cost", "cpu", "cost", "cpu cost range")
    print("{:30} {:>7} {:>7} {:>7} {:>7} {:>16}".format(*header))
    rows: list[dict[str, Any]] = []
    for name in STACKS:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        costs = [(v - cpu_off) * 1e6 for v in cpu[name]]
        row = {
            "configuration": name,
            "wall_us": w * 1e6,
            "wall_cost_us": (w - wall_off) * 1e6,
            "cpu_us": c * 1e6,
            "cpu_cost_us": (c - cpu_off) * 1e6,
            "cpu_cost_min_us": min(costs),
            "cpu_cost_max_us": max(costs),
        }
        rows.append(row)
        print(
            f"{name:30} {row['wall_us']:7.1f} {row['wall_cost_us']:7.1f} {row['cpu_us']:7.1f} "
            f"{row['cpu_cost_us']:7.1f} ({min(costs):6.1f} - {max(costs):6.1f})"
        )
    hooks: dict[str, list[float]] = {name: [] for name in STACKS}
    for _ in range(args.repeat):
        for name, stack in STACKS.items():
            hooks[name].append(hooks_seconds_per_job(args.jobs, stack))
    hooks_off = statistics.median(hooks["off"])
    print(
        f"\nthe hooks alone, called directly (no engine), CPU µs per job, median of {args.repeat}"
    )
    for row in rows:
        name = str(row["configuration"])
        row["hooks_cost_us"] = (statistics.median(hooks[name]) - hooks_off) * 1e6
        print(f"{name:30} {row['hooks_cost_us']:7.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"python {sys.version.split()[0]}",
            "jobs": args.jobs,
            "repeat": args.repeat,
            "rows": rows,
        }
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
