"""The public API is a promise: its names are frozen, and importing it stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import backrun

EXPECTED = [
    "BackrunError",
    "Clock",
    "DoNotRetry",
    "Engine",
    "Handler",
    "Job",
    "JobContext",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "JobState",
    "JobTimeout",
    "JsonFileStorage",
    "LeaseLost",
    "MemoryStorage",
    "Middleware",
    "Next",
    "PayloadTooLarge",
    "PostgresStorage",
    "Progress",
    "RateLimit",
    "RetryPolicy",
    "Schedule",
    "Storage",
    "StorageError",
    "SystemClock",
    "UnknownHandler",
    "Worker",
    "WorkerInfo",
    "__version__",
    "current_job",
    "handler",
]


def test_all_is_sorted_and_frozen() -> None:
    assert backrun.__all__ == sorted(backrun.__all__)
    assert backrun.__all__ == EXPECTED


def test_every_exported_name_resolves() -> None:
    for name in backrun.__all__:
        assert getattr(backrun, name) is not None, name


def test_job_states_are_stored_as_strings() -> None:
    assert [s.value for s in backrun.JobState] == [
        "scheduled",
        "queued",
        "running",
        "succeeded",
        "dead",
        "cancelled",
    ]


def test_errors_share_one_base() -> None:
    for name in ("UnknownHandler", "JobNotFound", "LeaseLost", "JobTimeout", "PayloadTooLarge"):
        assert issubclass(getattr(backrun, name), backrun.BackrunError)
    assert issubclass(backrun.StorageError, backrun.BackrunError)


def test_import_loads_no_optional_integration_and_starts_nothing() -> None:
    probe = (
        "import sys, threading, backrun;"
        "print(json.dumps({'modules': sorted(sys.modules), 'threads': threading.active_count()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json;" + probe],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    loaded = json.loads(out)
    heavy = ("django", "flask", "psycopg", "psycopg_pool", "opentelemetry.sdk", "prometheus_client")
    found = [m for m in loaded["modules"] if m.split(".")[0] in heavy or m.startswith(heavy)]
    assert found == []
    assert loaded["threads"] == 1


def test_engine_serves_metrics_on_loopback_by_default() -> None:
    import urllib.request

    engine = backrun.Engine(backrun.MemoryStorage())

    @engine.handler(name="metrics_probe")
    def probe(payload: dict[str, int]) -> None:
        pass

    engine.enqueue(probe, {"n": 1})
    engine.run_until_idle(timeout=10)
    server = engine.serve_metrics(port=0)
    try:
        assert server.addr == "127.0.0.1"
        body = urllib.request.urlopen(server.url, timeout=10).read().decode()
    finally:
        server.close()
    assert 'backrun_jobs_completed_total{handler="metrics_probe"' in body
