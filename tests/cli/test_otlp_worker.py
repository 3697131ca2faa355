"""OTLP export from the worker commands: without the extra, and with the collector down.

Issue 11, items 1 and 2: one line saying what to install (and the worker
runs), one line per outage and one on recovery (not several long lines per
failed batch), and an exit that does not wait on a collector that is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

from tests.cli.conftest import APPS
from tests.cli.procs import Proc
from tests.helpers import wait_until

pytest.importorskip("opentelemetry.sdk")

# Runs `backrun` in a process where the otel extra looks uninstalled.
NO_EXTRA = "import no_otel_sdk, sys; from backrun.cli import main; sys.exit(main())"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(app_env: dict[str, str], **extra: str) -> dict[str, str]:
    pythonpath = os.pathsep.join([str(APPS), str(Path(__file__).resolve().parents[2])])
    return {**app_env, "PYTHONPATH": pythonpath, **extra}


def test_worker_without_the_otel_extra_says_what_to_install_and_runs(
    cliapp: ModuleType, app_env: dict[str, str]
) -> None:
    job = cliapp.engine.enqueue("work", {"n": 1})
    env = _env(app_env, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    worker = Proc([sys.executable, "-c", NO_EXTRA, "worker", "cliapp:engine"], cwd=APPS, env=env)
    try:
        worker.wait_for("ready: waiting for jobs")
        worker.wait_for(rf"work\[{job.id}\] succeeded")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    finally:
        worker.kill()
    assert "Traceback" not in worker.output
    hints = [line for line in worker.lines if "pip install 'backrun[otel]'" in line]
    assert len(hints) == 1, worker.output
    assert "OTEL_EXPORTER_OTLP_ENDPOINT is set" in hints[0]
    assert "running without OTLP export" in hints[0]


def _exporter_lines(lines: Sequence[str]) -> list[str]:
    return [line for line in lines if "OTLP export to" in line]


def test_collector_down_logs_once_and_exit_is_bounded(
    cliapp: ModuleType, app_env: dict[str, str]
) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    env = _env(
        app_env,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_BSP_SCHEDULE_DELAY="50",
        OTEL_EXPORTER_OTLP_TIMEOUT="2",
    )
    worker = Proc(
        [sys.executable, "-m", "backrun", "worker", "cliapp:engine", "--shutdown-timeout", "1"],
        cwd=APPS,
        env=env,
    )
    try:
        worker.wait_for("ready: waiting for jobs")
        for n in range(3):  # three batches of spans, each export fails
            job = cliapp.engine.enqueue("work", {"n": n})
            worker.wait_for(rf"work\[{job.id}\] succeeded")
        worker.wait_for(r"OTLP export to .* failing", timeout=30)
        failed_before = len(_exporter_lines(worker.lines))
        job = cliapp.engine.enqueue("work", {"n": 9})
        worker.wait_for(rf"work\[{job.id}\] succeeded")
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.output
        took = time.monotonic() - signalled
    finally:
        worker.kill()
    assert failed_before == 1, worker.output
    assert _exporter_lines(worker.lines) == _exporter_lines(worker.lines)[:1], worker.output
    assert "Traceback" not in worker.output
    assert not [line for line in worker.lines if "opentelemetry" in line], worker.output
    assert all(len(line) < 300 for line in worker.lines), worker.output
    # 1 s of --shutdown-timeout for the flush, and a margin for a slow machine.
    assert took < 8, (took, worker.output)


class _Flaky:
    """A span exporter that fails ``failures`` times, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def export(self, spans: object) -> object:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.calls += 1
        if self.calls <= self.failures:
            logging.getLogger("opentelemetry.exporter.otlp.common.http").error(
                "Failed to export span batch code: None, reason: Connection refused"
            )
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def test_outage_is_one_line_and_recovery_another(caplog: pytest.LogCaptureFixture) -> None:
    from backrun.observability._otlp_outage import Outage, QuietSpanExporter

    caplog.set_level(logging.INFO)
    outage = Outage("http://collector:4318")
    inner = _Flaky(failures=5)
    exporter = QuietSpanExporter(inner, outage)  # type: ignore[arg-type]
    for _ in range(7):
        exporter.export([])
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "OTLP export to http://collector:4318 failing (spans: Failed to export span batch "
        "code: None, reason: Connection refused); retrying quietly, one line on recovery",
        "OTLP export to http://collector:4318 recovered after 5 failed export(s)",
    ]
    exporter.shutdown()
    assert inner.calls == 7
    exporter.export([])
    assert inner.calls == 7  # closed: nothing more is sent, nothing waits
    wait_until(lambda: outage.closed.is_set(), timeout=1)
