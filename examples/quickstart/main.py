"""backrun in one file: handlers, a mix of jobs, a worker with metrics, a summary.

Run it with ``python examples/quickstart/main.py`` (add a directory to keep
the store; by default a fresh temporary one is used and removed at the end).
It enqueues

* two mails now and one in 3 seconds,
* a card charge whose first attempt fails and whose retry succeeds,
* a thumbnail job that always fails and ends DEAD after its retries,

runs a worker in this process with Prometheus metrics on 127.0.0.1, prints
progress until every job has finished, then a summary. Exit status 0 when
every job ended as expected.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from datetime import timedelta
from typing import Any

import tenacity
from pydantic import BaseModel

import backrun

# -- handlers -------------------------------------------------------------------


_output = threading.Lock()


def say(text: str) -> None:
    """Print one whole line; handlers print from worker threads at the same time."""
    with _output:
        print(text, flush=True)


class SendMail(BaseModel):
    to: str
    subject: str


class SendMailHandler(backrun.Handler[SendMail]):
    """A class handler: built per job, so it could take a mailer in __init__."""

    name = "send_mail"

    def execute(self, payload: SendMail, ctx: backrun.JobContext) -> None:
        say(f"    -> mail to {payload.to}: {payload.subject!r} (attempt {ctx.attempt})")


class Charge(BaseModel):
    order_id: int
    cents: int


class Thumbnail(BaseModel):
    path: str


def charge_card(payload: Charge, ctx: backrun.JobContext) -> None:
    """Fails on the first attempt (a flaky network), succeeds on the retry."""
    if ctx.attempt == 1:
        raise ConnectionError("card network timed out")
    say(f"    -> charged order {payload.order_id}: {payload.cents / 100:.2f} EUR")


def make_thumbnail(payload: Thumbnail) -> None:
    """Always fails: after its retries the job is DEAD, with every error kept."""
    raise FileNotFoundError(payload.path)


# -- the engine ---------------------------------------------------------------


def build_engine(store_dir: str) -> backrun.Engine:
    """An engine on the JSON file store, retrying after 1 s (the default backs off)."""
    engine = backrun.Engine(
        storage=backrun.JsonFileStorage(store_dir),
        threads=4,
        retry=backrun.RetryPolicy(max_retries=2, wait=tenacity.wait_fixed(1)),
    )
    engine.add_handler(SendMailHandler)
    engine.add_handler(charge_card, name="charge_card")
    engine.add_handler(make_thumbnail, name="make_thumbnail")
    return engine


def enqueue_mix(engine: backrun.Engine) -> dict[str, str]:
    """Enqueue the jobs; return what each is expected to end as, by id."""
    expected = {}
    for who in ("ada@example.com", "grace@example.com"):
        job = engine.enqueue(SendMailHandler, SendMail(to=who, subject="Welcome!"))
        expected[job.id] = "succeeded"
    later = engine.enqueue(
        SendMailHandler,
        SendMail(to="ada@example.com", subject="How is it going?"),
        delay=timedelta(seconds=3),
    )
    expected[later.id] = "succeeded"
    expected[engine.enqueue("charge_card", {"order_id": 42, "cents": 1999}).id] = "succeeded"
    expected[engine.enqueue("make_thumbnail", {"path": "missing.png"}).id] = "dead"
    return expected


def start_metrics(engine: backrun.Engine) -> tuple[str, Any]:
    """Serve /metrics on 127.0.0.1 (a free port), if the metrics module is present."""
    try:
        from backrun.observability.metrics import serve_metrics
    except ImportError:
        return "(metrics not available)", None
    server = serve_metrics(engine, 0, addr="127.0.0.1")
    return str(getattr(server, "url", "")), server


def progress(engine: backrun.Engine, ids: list[str], started: float) -> dict[str, backrun.Job]:
    """Print a line whenever the states change; return the jobs once all have finished."""
    last = None
    pause = threading.Event()
    while True:
        jobs = {job_id: engine.get(job_id) for job_id in ids}
        states = Counter(job.state.value for job in jobs.values() if job is not None)
        line = ", ".join(f"{state} {n}" for state, n in sorted(states.items()))
        if line != last:
            say(f"[{time.monotonic() - started:5.1f}s] {line}")
            last = line
        if all(job is not None and job.finished for job in jobs.values()):
            return {k: v for k, v in jobs.items() if v is not None}
        pause.wait(0.1)


def summary(jobs: dict[str, backrun.Job], expected: dict[str, str]) -> bool:
    """Print one row per job; return True if every job ended as expected."""
    print()
    print(f"{'JOB':<34} {'HANDLER':<15} {'STATE':<10} {'ATTEMPTS':<9} LAST ERROR")
    ok = True
    for job_id, job in jobs.items():
        error = job.last_error
        text = f"{error.type}: {error.message}" if error else ""
        mark = "" if job.state.value == expected[job_id] else f"  <- expected {expected[job_id]}"
        ok = ok and not mark
        print(
            f"{job.id:<34} {job.handler:<15} {job.state.value:<10} "
            f"{job.attempts}/{job.max_attempts:<7} {text}{mark}"
        )
    return ok


def main(argv: list[str]) -> int:
    if argv:
        return run(argv[0])
    store_dir = tempfile.mkdtemp(prefix="backrun-quickstart-")
    try:
        return run(store_dir)
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
        print(f"removed {store_dir} (pass a directory to keep the store)")


def run(store_dir: str) -> int:
    """Run the demo on the store in ``store_dir``; 0 if every job ended as expected."""
    engine = build_engine(store_dir)
    expected = enqueue_mix(engine)
    print(f"store:   {store_dir}")
    url, server = start_metrics(engine)
    print(f"metrics: {url}")
    started = time.monotonic()
    try:
        with engine.running():
            jobs = progress(engine, list(expected), started)
        if server is not None:
            with urllib.request.urlopen(url, timeout=5) as response:
                scraped = response.read().decode()
            done = [
                line
                for line in scraped.splitlines()
                if "jobs_completed_total{" in line and not line.endswith(" 0.0")
            ]
            print("\nfrom /metrics:\n  " + "\n  ".join(sorted(done)))
    finally:
        if server is not None:
            server.close()
        engine.close()
    ok = summary(jobs, expected)
    print(f"\nall {len(jobs)} jobs finished in {time.monotonic() - started:.1f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
