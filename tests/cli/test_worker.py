"""``backrun worker`` as a real process: banner, job lines, signals, metrics, tracing."""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest

import backrun
from tests.cli.conftest import APPS, one_error_line, state_of
from tests.cli.procs import Proc
from tests.cli.procs import backrun as run_backrun


def test_worker_banner_lines_and_clean_sigterm(
    finished_jobs: dict[str, str], cliapp: ModuleType
) -> None:
    assert cliapp.engine.get(finished_jobs["bad"]).attempts == 2


def test_sigterm_drains_a_running_job_and_a_second_ctrl_c_forces(
    cliapp: ModuleType, app_env: dict[str, str], store: Path
) -> None:
    engine = cliapp.engine
    slow = engine.enqueue("work", {"n": 99}).id
    args = [sys.executable, "-m", "backrun", "worker", "cliapp:engine", "--threads", "2"]

    worker = Proc(args, cwd=APPS, env=app_env)
    try:
        worker.wait_for(rf"work\[{slow}\] started")
        worker.signal(signal.SIGTERM)
        worker.wait_for(r"SIGTERM received: claiming no more jobs, waiting up to 20s for 1 running")
        (store.parent / "go").touch()
        assert worker.wait() == 0, worker.output
    finally:
        worker.kill()
    assert f"work[{slow}] succeeded" in worker.output
    assert state_of(cliapp, slow) == "succeeded"

    (store.parent / "go").unlink()
    stuck = engine.enqueue("work", {"n": 99}).id
    worker = Proc(args, cwd=APPS, env=app_env)
    try:
        worker.wait_for(rf"work\[{stuck}\] started")
        worker.signal(signal.SIGINT)
        worker.wait_for(r"SIGINT received")
        worker.signal(signal.SIGINT)
        assert worker.wait() == 1, worker.output
    finally:
        worker.kill()
    assert "SIGINT again: forcing shutdown, releasing 1 running job(s)" in worker.output
    assert "worker stopped (forced)" in worker.output
    job = engine.get(stuck)
    assert (job.state.value, job.attempts) == ("queued", 0)


def test_worker_options_banner_metrics_and_json_log(
    cliapp: ModuleType, app_env: dict[str, str]
) -> None:
    job = cliapp.engine.enqueue("work", {"n": 3}, queue="mail")
    worker = Proc(
        [
            sys.executable,
            "-m",
            "backrun",
            "worker",
            "cliapp:engine",
            "--queues",
            "mail,other",
            "--threads",
            "3",
            "--shutdown-timeout",
            "7",
            "--metrics-port",
            "0",
            "--log-format",
            "json",
        ],
        cwd=APPS,
        env=app_env,
    )
    try:
        worker.wait_for(r"ready: waiting for jobs")
        banner = json.loads(worker.wait_for(r'"event": "worker.banner"'))
        assert banner["message"] == f"backrun {backrun.__version__} worker"
        assert banner["app"] == "cliapp:engine"
        assert banner["store"].startswith("JsonFileStorage (/")
        assert banner["queues"] == "mail, other"
        assert banner["threads"] == 3
        assert banner["shutdown_timeout_s"] == 7
        assert banner["handlers"] == ["work"]
        url = banner["metrics"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url), url
        line = worker.wait_for(r'"event": "job.succeeded"')
        record = json.loads(line)
        assert record["job_id"] == job.id
        assert record["queue"] == "mail"
        assert record["duration_s"] >= 0
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"backrun_" in response.read()
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
    finally:
        worker.kill()
    # One format for every line: the banner, the worker's and the jobs' lines are all JSON.
    records = [json.loads(line) for line in worker.lines if line.strip()]
    assert any("stopped cleanly" in r["message"] for r in records)


def test_worker_exits_3_when_its_store_is_unavailable(immutable_dir: Path) -> None:
    env = {"CLI_TEST_STORE": str(immutable_dir / "store")}
    result = run_backrun("worker", "cliapp:engine", cwd=APPS, env=env)
    assert result.returncode == 3
    line = one_error_line(result)
    assert line.startswith("error: store unavailable while importing 'cliapp': ")


class _Collector(BaseHTTPRequestHandler):
    bodies: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.bodies.append((self.path, self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_worker_exports_spans_over_otlp_when_the_environment_asks(
    cliapp: ModuleType, app_env: dict[str, str]
) -> None:
    trace_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Collector.bodies.clear()
    job = cliapp.engine.enqueue("work", {"n": 7})
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    env = {**app_env, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "cli-test"}
    worker = Proc([sys.executable, "-m", "backrun", "worker", "cliapp:engine"], cwd=APPS, env=env)
    try:
        line = worker.wait_for(r"tracing: ")
        assert f"on (TracerProvider, OTLP/HTTP to {endpoint})" in line
        worker.wait_for(rf"work\[{job.id}\] succeeded")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    finally:
        worker.kill()
        server.shutdown()
        server.server_close()
    names = set()
    for path, body in _Collector.bodies:
        if path == "/v1/traces":
            request = trace_pb2.ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    names.update(span.name for span in scope.spans)
    assert "process default" in names, (names, [p for p, _ in _Collector.bodies])


def test_a_crashing_worker_exits_1_and_says_why(tmp_path: Path) -> None:
    result = run_backrun("worker", "crashy:engine", cwd=APPS)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: worker crashed: RuntimeError: lock table corrupted"
    assert "ready: waiting for jobs" not in result.stderr
