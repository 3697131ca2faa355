"""OTLP/HTTP export, received by a real HTTP receiver decoding the protobuf requests.

The test process enqueues into a JSON store (exporting its PRODUCER spans to
the receiver); a worker subprocess on the same store, configured only by
``BACKRUN_OTLP_ENDPOINT``, runs the jobs and exports its CONSUMER spans and
OTel metrics to the same receiver. Each job's spans must share one trace id.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import backrun
from backrun.observability import TracingMiddleware
from backrun.observability.otlp import _signal_url
from backrun.storage.jsonfile import JsonFileStorage

from .support import read_json_line
from .worker_app import Work

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Received:
    spans: list[tuple[str, Span]] = field(default_factory=list)  # (service.name, span)
    metrics: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value") or "string_value")


def attrs(items: Any) -> dict[str, Any]:
    pairs: list[KeyValue] = list(items)
    return {kv.key: value(kv.value) for kv in pairs}


@pytest.fixture
def receiver() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            assert self.headers["Content-Type"] == "application/x-protobuf"
            if self.path == "/v1/traces":
                request = ExportTraceServiceRequest.FromString(body)
                with received.lock:
                    for rs in request.resource_spans:
                        service = attrs(rs.resource.attributes)["service.name"]
                        for scope in rs.scope_spans:
                            received.spans.extend((service, s) for s in scope.spans)
                reply = ExportTraceServiceResponse().SerializeToString()
            elif self.path == "/v1/metrics":
                metrics = ExportMetricsServiceRequest.FromString(body)
                with received.lock:
                    for rm in metrics.resource_metrics:
                        for scope in rm.scope_metrics:
                            received.metrics.update(m.name for m in scope.metrics)
                reply = ExportMetricsServiceResponse().SerializeToString()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def enqueue_with_tracing(endpoint: str, store: Path) -> list[backrun.Job]:
    """Enqueue in this process, exporting the send spans over OTLP (no global provider)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "producer"}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=_signal_url(endpoint, "traces")))
    )
    engine = backrun.Engine(JsonFileStorage(store), middleware=[TracingMiddleware(provider)])

    @engine.handler(name="ok")
    def ok(payload: Work) -> None:
        return None

    @engine.handler(name="flaky")
    def flaky(payload: Work) -> None:
        return None

    jobs = [engine.enqueue("ok", Work(n=1)), engine.enqueue("flaky", Work(n=2))]
    provider.shutdown()  # flushes the batch
    engine.close()
    return jobs


def test_producer_and_consumer_spans_share_a_trace_across_processes(
    receiver: tuple[str, Received], tmp_path: Path
) -> None:
    endpoint, received = receiver
    store = tmp_path / "store"
    jobs = enqueue_with_tracing(endpoint, store)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["BACKRUN_OTLP_ENDPOINT"] = endpoint
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.observability.worker_app", "otlp", str(store)]
        + [job.id for job in jobs],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "worker.log").open("w"),
        text=True,
    )
    try:
        assert read_json_line(worker, timeout=60) == {"states": ["succeeded", "succeeded"]}
        assert worker.wait(30) == 0, (tmp_path / "worker.log").read_text()
    finally:
        if worker.poll() is None:
            worker.kill()

    with received.lock:
        spans = list(received.spans)
        metric_names = set(received.metrics)
    for job in jobs:
        mine = [
            (svc, s) for svc, s in spans if attrs(s.attributes)["messaging.message.id"] == job.id
        ]
        sends = [s for svc, s in mine if s.kind == Span.SPAN_KIND_PRODUCER]
        processes = [s for svc, s in mine if s.kind == Span.SPAN_KIND_CONSUMER]
        assert {svc for svc, s in mine} == {"producer", "backrun-worker"}
        (send,) = sends
        assert send.name == "send default"
        assert processes, f"no process span for {job.handler}"
        for process in processes:
            assert process.name == "process default"
            assert process.trace_id == send.trace_id  # one trace across two processes
            assert process.parent_span_id == send.span_id
            a = attrs(process.attributes)
            assert a["messaging.system"] == "backrun"
            assert a["messaging.operation.type"] == "process"
            assert a["messaging.destination.name"] == "default"
            assert a["backrun.job.handler"] == job.handler
            assert a["messaging.client.id"]
        if job.handler == "flaky":
            first, second = sorted(
                processes, key=lambda s: attrs(s.attributes)["backrun.job.attempt"]
            )
            assert first.status.code == Status.STATUS_CODE_ERROR
            assert attrs(first.attributes)["error.type"] == "ConnectionError"
            assert attrs(first.attributes)["backrun.job.outcome"] == "retried"
            assert [e.name for e in first.events] == ["exception"]
            assert "backrun.job.outcome" not in attrs(second.attributes)
            assert second.status.code == Status.STATUS_CODE_UNSET
        else:
            (process,) = processes
            assert process.status.code == Status.STATUS_CODE_UNSET

    # The worker's OTel metrics went out too (an OTel-only pipeline gets the numbers).
    assert {
        "messaging.client.consumed.messages",
        "messaging.process.duration",
    } <= metric_names


def test_configure_otlp_does_nothing_without_an_endpoint() -> None:
    from backrun.observability import configure_otlp

    assert configure_otlp({}) is None
    assert (
        configure_otlp({"BACKRUN_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}) is None
    )


def test_signal_url() -> None:
    assert _signal_url("http://c:4318", "traces") == "http://c:4318/v1/traces"
    assert _signal_url("http://c:4318/", "metrics") == "http://c:4318/v1/metrics"
    assert _signal_url("http://c:4318/v1/traces", "traces") == "http://c:4318/v1/traces"


def run_python(code: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BACKRUN_OTLP"))}
    return {**env, **extra}


def test_configure_otlp_installs_a_batch_exporting_provider_once() -> None:
    code = """
from opentelemetry import metrics, trace
from opentelemetry.sdk.trace import TracerProvider
from backrun.observability import configure_otlp
export = configure_otlp()
assert export is not None
assert trace.get_tracer_provider() is export.tracer_provider
assert isinstance(export.tracer_provider, TracerProvider)
processors = export.tracer_provider._active_span_processor._span_processors
assert [type(p).__name__ for p in processors] == ["BatchSpanProcessor"], processors
assert metrics.get_meter_provider() is export.meter_provider
assert configure_otlp() is export
print(export.tracer_provider.resource.attributes["service.name"])
"""
    # A port nobody listens on: nothing is exported, and nothing needs to be.
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_SERVICE_NAME="svc")
    assert run_python(code, env) == "svc"


def test_configure_otlp_leaves_an_application_provider_alone() -> None:
    code = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from backrun.observability import configure_otlp
mine = TracerProvider()
trace.set_tracer_provider(mine)
assert configure_otlp() is None
assert trace.get_tracer_provider() is mine
print("ok")
"""
    assert run_python(code, clean_env(BACKRUN_OTLP_ENDPOINT="http://127.0.0.1:9")) == "ok"
