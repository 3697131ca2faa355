"""Shared by every trial script (stdlib only: it runs in both virtual environments).

A trial is one system measured once, in its own process: the same phases on
every system, driven by :func:`run_trial` through a small :class:`Driver`.

Every job is the same no-op handler that records ``(enqueued_at, started_at)``
in a :class:`Ledger` (a list in this process, or an append-only file written by
worker processes), so completion is detected and timed identically everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

RECORD = struct.Struct("dd")  # enqueued_at, started_at (time.time(), shared by processes)
LEDGER_ENV = "BENCH_LEDGER"


class MemoryLedger:
    """Records from handler threads of this process."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []
        self._target = 0
        self._done = threading.Event()

    def record(self, enqueued_at: float) -> None:
        stamps = self.stamps
        stamps.append((enqueued_at, time.time()))
        if len(stamps) >= self._target:
            self._done.set()

    def reset(self, target: int) -> None:
        self.stamps = []
        self._target = target
        self._done.clear()

    def expect(self, target: int) -> None:
        """Change the target, keeping the records."""
        self._target = target
        if len(self.stamps) >= target:
            self._done.set()

    def count(self) -> int:
        return len(self.stamps)

    def wait(self, timeout: float) -> list[tuple[float, float]]:
        """The records once ``target`` jobs ran, or those there after ``timeout`` s."""
        self._done.wait(timeout)
        return list(self.stamps)


class FileLedger:
    """Records appended by worker processes to one file (one ``O_APPEND`` write each)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._target = 0

    def reset(self, target: int) -> None:
        os.ftruncate(self._fd, 0)
        self._target = target

    def expect(self, target: int) -> None:
        """Change the target, keeping the records."""
        self._target = target

    def count(self) -> int:
        return os.fstat(self._fd).st_size // RECORD.size

    def wait(self, timeout: float) -> list[tuple[float, float]]:
        """The records once ``target`` jobs ran, or those there after ``timeout`` s."""
        want = self._target * RECORD.size
        deadline = time.monotonic() + timeout
        while os.fstat(self._fd).st_size < want and time.monotonic() < deadline:
            time.sleep(0.001)
        size = min(os.fstat(self._fd).st_size, want)
        size -= size % RECORD.size
        data = os.pread(self._fd, size, 0)
        return [RECORD.unpack_from(data, i) for i in range(0, size, RECORD.size)]


class FileRecorder:
    """The worker-process side of a :class:`FileLedger` (path from ``$BENCH_LEDGER``)."""

    def __init__(self) -> None:
        self._fd = -1

    def record(self, enqueued_at: float) -> None:
        if self._fd < 0:
            self._fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND)
        os.write(self._fd, RECORD.pack(enqueued_at, time.time()))


def peak_rss_kb(pid: int | str = "self") -> int:
    """Peak resident set size (VmHWM) of a live process, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def rss_kb(pid: int | str = "self") -> int:
    """Current resident set size (VmRSS) of a live process, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Driver:
    """What a trial needs from a system; subclasses fill it in."""

    ledger: MemoryLedger | FileLedger
    #: True if :meth:`restart_empty` works, so a slow phase may stop early.
    can_restart_empty = False

    def enqueue(self, enqueued_at: float) -> None:
        raise NotImplementedError

    def start_workers(self) -> None:
        raise NotImplementedError

    def worker_rss_kb(self) -> int:
        """Peak RSS of the process(es) running the worker (summed over processes)."""
        return peak_rss_kb()

    def stop_workers(self) -> None:
        raise NotImplementedError

    def restart_empty(self) -> None:
        """Stop the workers, drop every queued job, start them again (warm)."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise if the workers died (worker processes override this)."""

    def close(self) -> None:
        """Remove what the trial created."""


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _produce(driver: Driver, jobs: int, cap: float) -> int:
    """Enqueue up to ``jobs`` (stamped 0), stopping after ``cap`` seconds; return how many."""
    deadline = time.perf_counter() + cap
    done = 0
    while done < jobs:
        driver.enqueue(0.0)
        done += 1
        if not done % 64 and time.perf_counter() > deadline:
            break
    return done


def _finish(driver: Driver, count: int, cap: float, timeout: float) -> list[tuple[float, float]]:
    """Wait for ``count`` jobs; a driver that can restart empty gives up after ``cap`` s."""
    ledger = driver.ledger
    stamps = ledger.wait(cap if driver.can_restart_empty else timeout)
    if len(stamps) < count:
        if not driver.can_restart_empty:
            raise TimeoutError(f"{len(stamps)}/{count} jobs ran in {timeout} s")
        driver.restart_empty()
    return stamps


def run_trial(
    driver: Driver,
    *,
    jobs: int,
    latency_jobs: int,
    interval: float,
    cap: float,
    timeout: float,
    enqueue_threads: int = 0,
    more_enqueue_threads: int = 0,
) -> dict[str, Any]:
    """Run the phases on one system and return its figures (rates in jobs/s, times in ms).

    1. enqueue: one producer enqueues ``jobs`` with no worker running;
    2. drain: the workers start on that full queue; rate between the first and
       the last job's start, so process and thread start-up is left out;
    3. end-to-end: workers idle and warm; one producer enqueues ``jobs``;
       rate from the first enqueue to the last job's start;
    4. pickup latency: ``latency_jobs`` enqueued at a steady trickle (one every
       ``interval`` s, slower if the system's end-to-end rate needs it, so it
       stays under 40% busy) while the workers idle; enqueue call to handler start;
    5. optionally, enqueue from ``enqueue_threads`` producer threads at once
       (workers stopped), for comparison with the machine's multi-thread fsync rate,
       and again from ``more_enqueue_threads``.

    A phase of a slow system stops after ``cap`` seconds and is measured on the
    jobs done by then (``*_jobs`` in the result say how many).
    """
    ledger = driver.ledger
    result: dict[str, Any] = {}
    ledger.reset(jobs)
    started = time.perf_counter()
    filled = _produce(driver, jobs, cap)
    result["enqueue"] = filled / (time.perf_counter() - started)
    result["enqueue_jobs"] = filled

    ledger.reset(filled)
    driver.start_workers()
    deadline = time.monotonic() + timeout
    while not ledger.count() and time.monotonic() < deadline:
        driver.check()
        time.sleep(0.001)  # the cap counts from the first job, not the process start
    stamps = _finish(driver, filled, cap, timeout)
    starts = [s for _, s in stamps]
    result["drain"] = (len(starts) - 1) / max(max(starts) - min(starts), 1e-9)
    result["drain_jobs"] = len(starts)

    ledger.reset(jobs)
    began = time.time()
    sent = _produce(driver, jobs, cap)
    ledger.expect(sent)
    stamps = _finish(driver, sent, cap, timeout)
    result["e2e"] = len(stamps) / max(max(s for _, s in stamps) - began, 1e-9)
    result["e2e_jobs"] = len(stamps)

    time.sleep(0.3)  # let the workers go idle: pickup is measured from idle
    interval = max(interval, 0.4 / result["e2e"] * 4)
    ledger.reset(latency_jobs)
    origin = time.perf_counter()
    for i in range(latency_jobs):
        pause = origin + i * interval - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        driver.enqueue(time.time())
    stamps = ledger.wait(timeout)
    delays = [(s - e) * 1000 for e, s in stamps]
    result["pickup_p50_ms"] = statistics.median(delays)
    result["pickup_p99_ms"] = percentile(delays, 99)
    result["pickup_interval_ms"] = interval * 1000
    result["rss_mb"] = driver.worker_rss_kb() / 1024
    driver.stop_workers()

    for threads in (enqueue_threads, more_enqueue_threads):
        if threads:
            result[f"enqueue_{threads}t"] = threaded_enqueue(driver, jobs, threads, cap)
    return result


def threaded_enqueue(driver: Driver, jobs: int, threads: int, cap: float) -> float:
    """Enqueue about ``jobs`` jobs from ``threads`` producer threads at once; jobs/s."""
    per_thread = jobs // threads
    deadline = time.perf_counter() + cap
    counts = [0] * threads

    def produce(index: int) -> None:
        for n in range(per_thread):
            driver.enqueue(0.0)
            if not n % 16 and time.perf_counter() > deadline:
                counts[index] = n + 1
                return
        counts[index] = per_thread

    producers = [threading.Thread(target=produce, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for producer in producers:
        producer.start()
    for producer in producers:
        producer.join()
    return sum(counts) / (time.perf_counter() - started)


def trial_arguments(variants: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant", choices=variants)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency-jobs", type=int, default=500)
    parser.add_argument("--interval", type=float, default=0.002)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--cap", type=float, default=6.0)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--enqueue-threads", type=int, default=0)
    parser.add_argument("--more-enqueue-threads", type=int, default=0)
    return parser


def emit(result: dict[str, Any]) -> None:
    """Hand the figures to compare.py: one JSON line, last on stdout."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def burst(work: Callable[[], None], threads: int, seconds: float) -> tuple[int, float]:
    """Call ``work`` in a loop from ``threads`` threads for ``seconds``; (calls, elapsed)."""
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def loop(index: int) -> None:
        while time.perf_counter() < deadline:
            work()
            counts[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts), time.perf_counter() - started


Extra = Callable[[Driver, argparse.Namespace], dict[str, Any]]


def main_for(
    build: Callable[[argparse.Namespace], Driver],
    variants: Sequence[str],
    extra: Extra | None = None,
) -> None:
    """Parse the arguments, run the trial (and ``extra``), print the RESULT line."""
    args = trial_arguments(variants).parse_args()
    driver = build(args)
    try:
        result = run_trial(
            driver,
            jobs=args.jobs,
            latency_jobs=args.latency_jobs,
            interval=args.interval,
            cap=args.cap,
            timeout=args.timeout,
            enqueue_threads=args.enqueue_threads,
            more_enqueue_threads=args.more_enqueue_threads,
        )
        if extra is not None:
            result.update(extra(driver, args))
    finally:
        driver.close()
    emit(result)


class WorkerProcesses:
    """Worker processes of a broker-based peer, recording into a :class:`FileLedger`."""

    def __init__(self, ledger: FileLedger) -> None:
        self.ledger = ledger
        self.processes: list[Any] = []

    def start(self, argv: Sequence[str], count: int = 1) -> None:
        import subprocess

        env = dict(os.environ, **{LEDGER_ENV: self.ledger.path})
        env["PYTHONPATH"] = os.path.dirname(os.path.abspath(__file__))
        for _ in range(count):
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, *argv],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
            )

    def check(self) -> None:
        """Raise if a worker process has exited."""
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"worker process exited with {process.returncode}")

    def peak_rss_kb(self) -> int:
        return sum(peak_rss_kb(p.pid) for p in self.processes if p.poll() is None)

    def stop(self) -> None:
        import signal
        import subprocess

        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def wait_for_signal() -> None:
    """Block the main thread until SIGTERM or SIGINT."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.2):
        pass


def warm_up(driver: Driver, timeout: float = 60.0) -> None:
    """Run one job through freshly started workers and forget it."""
    driver.ledger.reset(1)
    driver.enqueue(0.0)
    deadline = time.monotonic() + timeout
    while not driver.ledger.count() and time.monotonic() < deadline:
        driver.check()
        time.sleep(0.005)
    if not driver.ledger.wait(0):
        raise TimeoutError(f"workers did not start within {timeout} s")
