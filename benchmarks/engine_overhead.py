"""Engine overhead: no-op jobs through backrun on MemoryStorage vs a bare thread pool.

Measures, in one run and interleaved so machine drift hits all alike:

* the baseline: ``concurrent.futures.ThreadPoolExecutor(4)`` running a no-op
  function N times (submit + run + wait);
* backrun, ``threads=4``, MemoryStorage, with the middleware stack
  off, with the default stack (tracing + metrics, no OpenTelemetry SDK), and
  with the default stack plus an OpenTelemetry SDK and a batch exporter, and
  with each layer of the default stack alone (its own cost per job);
  enqueue rate from one thread, then the drain rate of the filled store.

Usage: python benchmarks/engine_overhead.py [--jobs 100000] [--repeat 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import backrun


class Empty(BaseModel):
    n: int = 0


def noop(payload: object = None) -> None:
    return None


def bare_pool(jobs: int) -> dict[str, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        wait([pool.submit(noop) for _ in range(jobs)])
    return {"drain": jobs / (time.perf_counter() - started)}


def _sdk_middleware() -> list[backrun.Middleware]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from backrun.observability import default_middleware
    from backrun.observability.tracing import TracingMiddleware

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    layers = [m for m in default_middleware() if not isinstance(m, TracingMiddleware)]
    return [TracingMiddleware(tracer_provider=provider), *layers]


def through_engine(
    jobs: int, middleware: Callable[[], list[backrun.Middleware]]
) -> dict[str, float]:
    engine = backrun.Engine(backrun.MemoryStorage(), threads=4, middleware=middleware())
    engine.add_handler(noop_handler, name="noop")
    payload = Empty()
    started = time.perf_counter()
    for _ in range(jobs):
        engine.enqueue("noop", payload)
    enqueue_rate = jobs / (time.perf_counter() - started)
    started = time.perf_counter()
    done = engine.run_until_idle(timeout=600)
    drain_rate = jobs / (time.perf_counter() - started)
    assert done == jobs, (done, jobs)
    return {"enqueue": enqueue_rate, "drain": drain_rate}


def noop_handler(payload: Empty) -> None:
    return None


def _default() -> list[backrun.Middleware]:
    from backrun.observability import default_middleware

    return list(default_middleware())


def _one_layer(index: int) -> Callable[[], list[backrun.Middleware]]:
    """The default stack's layer at ``index``, alone."""

    def build() -> list[backrun.Middleware]:
        return [_default()[index]]

    return build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    systems: dict[str, Callable[[], dict[str, float]]] = {
        "bare ThreadPoolExecutor(4)": lambda: bare_pool(args.jobs),
        "backrun, no middleware": lambda: through_engine(args.jobs, list),
        "backrun, default middleware": lambda: through_engine(args.jobs, _default),
        "backrun, default + OTel SDK": lambda: through_engine(args.jobs, _sdk_middleware),
    }
    for index, layer in enumerate(_default()):
        build = _one_layer(index)
        systems[f"backrun, {type(layer).__name__} alone"] = (
            lambda build=build: through_engine(args.jobs, build)  # type: ignore[misc]
        )
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in systems}
    for _ in range(args.repeat):
        for name, run in systems.items():
            for metric, value in run().items():
                samples[name].setdefault(metric, []).append(value)

    base = statistics.median(samples["bare ThreadPoolExecutor(4)"]["drain"])
    rows = []
    print(f"{args.jobs:,} no-op jobs, median of {args.repeat} (min-max), jobs/s")
    print(f"{'system':32} {'enqueue':>22} {'drain':>22} {'drain/bare':>10} {'µs/job':>8}")
    for name, metrics in samples.items():
        drain = statistics.median(metrics["drain"])
        row: dict[str, Any] = {
            "system": name,
            "drain_median": drain,
            "drain_min": min(metrics["drain"]),
            "drain_max": max(metrics["drain"]),
            "drain_ratio": drain / base,
            "overhead_us": (1 / drain - 1 / base) * 1e6,
        }
        enqueue = ""
        if "enqueue" in metrics:
            row["enqueue_median"] = statistics.median(metrics["enqueue"])
            enqueue = (
                f"{row['enqueue_median']:>9,.0f} ({min(metrics['enqueue']):,.0f}-"
                f"{max(metrics['enqueue']):,.0f})"
            )
        rows.append(row)
        print(
            f"{name:32} {enqueue:>22} "
            f"{drain:>9,.0f} ({row['drain_min']:,.0f}-{row['drain_max']:,.0f}) "
            f"{row['drain_ratio']:>10.2f} {row['overhead_us']:>8.1f}"
        )
    off = next(r for r in rows if r["system"] == "backrun, no middleware")
    for row in rows[2:]:
        cost = (1 / row["drain_median"] - 1 / off["drain_median"]) * 1e6
        print(f"middleware cost, {row['system']}: {cost:.1f} µs/job over no middleware")
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {sys.version.split()[0]}",
        "jobs": args.jobs,
        "repeat": args.repeat,
        "rows": rows,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
