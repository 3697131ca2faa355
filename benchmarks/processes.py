"""CPU-bound jobs: ``--processes 2 --threads 1`` against ``--processes 1 --threads 2``.

A pure-Python job (a loop of integer arithmetic) holds the GIL, so two threads
in one interpreter run it one at a time while two processes run it side by
side. Each trial starts a real ``backrun worker`` with one of the two
layouts on a fresh JSON store, waits until every child is ready, enqueues
``--jobs`` jobs at once, and times until all have succeeded. The two layouts
are interleaved (A, B, A, B, ...) so that load from other users of a shared
machine falls on both alike; the ratio reported is the median over the
repeats of (1 process x 2 threads time) / (2 processes x 1 thread time).
The median run time of one job is printed too: with two threads sharing the
GIL each job takes about twice its CPU time, with two processes about once
(both longer when other programs share the CPUs).

Usage: python benchmarks/processes.py [--jobs 8] [--loops 8000000] [--repeat 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import backrun  # noqa: E402

APP = """
import os
from pathlib import Path

from pydantic import BaseModel

import backrun

engine = backrun.Engine(
    backrun.JsonFileStorage(Path(os.environ["BENCH_STORE"]), fsync=False), middleware=[]
)


class Spin(BaseModel):
    loops: int


@engine.handler(name="spin")
def spin(job: Spin) -> None:
    total = 0
    for i in range(job.loops):
        total += i * i % 7
"""

LAYOUTS = {"2 processes x 1 thread": ("2", "1"), "1 process x 2 threads": ("1", "2")}


def _trial(
    workdir: Path, processes: str, threads: str, jobs: int, loops: int
) -> tuple[float, float]:
    """Wall time until every job succeeded, and the median job's run time."""
    store = workdir / f"store-{time.monotonic_ns()}"
    env = {**os.environ, "BENCH_STORE": str(store), "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "backrun", "worker", "benchapp:engine"]
    args += ["--processes", processes, "--threads", threads, "--log-format", "json"]
    proc = subprocess.Popen(
        args, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    ready = threading.Semaphore(0)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if re.search(r"ready: waiting for jobs", line):
                ready.release()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    os.environ["BENCH_STORE"] = str(store)
    spec = importlib.util.spec_from_file_location(f"benchapp_{store.name}", workdir / "benchapp.py")
    assert spec is not None
    assert spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    engine: backrun.Engine = app.engine
    try:
        for _ in range(int(processes)):
            if not ready.acquire(timeout=60):
                raise RuntimeError("the worker did not start")
        start = time.perf_counter()
        engine.enqueue_many("spin", [{"loops": loops}] * jobs)
        while True:
            counts = engine.storage.counts()
            if counts.get(("default", backrun.JobState.SUCCEEDED), 0) == jobs:
                break
            time.sleep(0.1)  # counting reads the store: keep it off the CPU being measured
        wall = time.perf_counter() - start
        runs = [
            (job.finished_at - job.started_at).total_seconds()
            for job in engine.jobs(limit=jobs)
            if job.finished_at is not None and job.started_at is not None
        ]
        return wall, statistics.median(runs)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        reader.join(timeout=5)
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--loops", type=int, default=8_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write every sample here")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="backrun-bench-processes-") as tmp:
        workdir = Path(tmp)
        (workdir / "benchapp.py").write_text(APP)
        samples: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        job_times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        ratios: list[float] = []
        for round_ in range(ns.repeat):
            times = {}
            for name, (processes, threads) in LAYOUTS.items():
                times[name], job_time = _trial(workdir, processes, threads, ns.jobs, ns.loops)
                samples[name].append(times[name])
                job_times[name].append(job_time)
                print(
                    f"round {round_ + 1}: {name}: {times[name]:.2f}s (median job {job_time:.2f}s)",
                    flush=True,
                )
            ratio = times["1 process x 2 threads"] / times["2 processes x 1 thread"]
            ratios.append(ratio)
            print(f"round {round_ + 1}: ratio {ratio:.2f}x", flush=True)
    load = os.getloadavg()
    print(
        f"\n{ns.jobs} jobs of {ns.loops:,} loops, {ns.repeat} interleaved rounds, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f}:"
    )
    for name, values in samples.items():
        each = ", ".join(f"{v:.2f}" for v in values)
        job = statistics.median(job_times[name])
        print(f"  {name}: median {statistics.median(values):.2f}s ({each}); median job {job:.2f}s")
    print(f"  speed-up of 2 processes over 2 threads: median {statistics.median(ratios):.2f}x")
    if ns.json:
        result: dict[str, Any] = {"jobs": ns.jobs, "loops": ns.loops, "samples": samples}
        result.update(ratios=ratios, job_times=job_times, cpus=os.cpu_count(), load=load)
        ns.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
