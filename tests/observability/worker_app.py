"""A real worker process for the end-to-end observability tests.

``python -m tests.observability.worker_app prometheus``
    Serves ``/metrics`` on a free port (printed as ``{"metrics_port": N}``),
    then generates traffic until SIGTERM: successes, retries, dead jobs, a
    timed-out handler left stuck, orphans of a "ghost" worker to recover,
    a backlog on a queue nobody serves (lag), and a schedule ticking every second.

``python -m tests.observability.worker_app otlp STORE_DIR JOB_ID...``
    Exports over OTLP (``BACKRUN_OTLP_ENDPOINT``); runs a worker on the JSON
    store in ``STORE_DIR`` (where another process enqueued the jobs) until
    the given jobs are finished, flushes, and prints ``{"states": [...]}``.

Both use the engine's default middleware stack.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import tenacity
from pydantic import BaseModel

import backrun
from backrun.observability import configure_otlp, serve_metrics
from backrun.storage.base import Storage
from backrun.storage.jsonfile import JsonFileStorage
from backrun.storage.memory import MemoryStorage

RELEASE = threading.Event()  # lets the stuck handler return at exit


class Work(BaseModel):
    n: int = 0


def build_engine(storage: Storage) -> backrun.Engine:
    engine = backrun.Engine(
        storage,
        threads=4,
        retry=backrun.RetryPolicy(max_retries=1, wait=tenacity.wait_fixed(0.05)),
        shutdown_timeout=2.0,
        recovery_interval=0.2,
    )

    @engine.handler(name="ok")
    def ok(payload: Work) -> None:
        time.sleep(0.002 * (payload.n % 5))  # a spread of durations for the histogram

    @engine.handler(name="flaky")
    def flaky(payload: Work, ctx: backrun.JobContext) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("the first attempt always fails")

    @engine.handler(name="doomed")
    def doomed(payload: Work) -> None:
        raise ValueError("this job always fails")

    @engine.handler(
        name="stuck",
        retry=backrun.RetryPolicy(max_retries=0, timeout=timedelta(milliseconds=200)),
    )
    def stuck(payload: Work) -> None:
        RELEASE.wait(60)  # ignores its cancellation: a stuck thread after the timeout

    return engine


def emit(message: dict[str, object]) -> None:
    print(json.dumps(message), flush=True)


def prometheus_mode() -> None:
    engine = build_engine(MemoryStorage())
    engine.schedule("ok", every=1, name="heartbeat")  # feeds the schedule panel
    server = serve_metrics(engine, 0)
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        engine.enqueue("stuck", Work())
        while not stop.is_set():
            n += 1
            engine.enqueue_many("ok", [Work(n=n + i) for i in range(3)])
            engine.enqueue("flaky", Work(n=n))
            engine.enqueue("doomed", Work(n=n))
            engine.enqueue("ok", Work(n=n), queue="backlog")
            if n % 4 == 0:
                # A job taken by a worker that then "died": the live worker rescues it.
                engine.enqueue("ok", Work(n=n), queue="backlog")
                engine.storage.claim(
                    queues=["backlog"],
                    limit=1,
                    now=engine.clock.now(),
                    worker_id="ghost-0-deadbeef",
                    lease=timedelta(seconds=60),
                )
            stop.wait(0.25)

    emit({"metrics_port": server.port})
    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        engine.run_forever(queues=["default"])
    finally:
        stop.set()
        RELEASE.set()
        thread.join(5)
        server.close()
    emit({"stopped": True})


def otlp_mode(store: Path, job_ids: list[str]) -> None:
    export = configure_otlp(service_name="backrun-worker")
    if export is None:
        raise SystemExit("BACKRUN_OTLP_ENDPOINT is not set")
    engine = build_engine(JsonFileStorage(store))
    deadline = time.monotonic() + 30
    with engine.running():
        while True:
            current = [engine.get(job_id) for job_id in job_ids]
            if all(j is not None and j.finished for j in current):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"jobs did not finish: {current}")
            time.sleep(0.02)
    export.flush()
    engine.close()
    emit({"states": [j.state.value for j in current if j is not None]})


def main(argv: list[str]) -> None:
    if argv[1:2] == ["prometheus"]:
        prometheus_mode()
    elif argv[1:2] == ["otlp"] and len(argv) >= 4:
        otlp_mode(Path(argv[2]), argv[3:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
