"""Quiet OTLP exporters: one log line when export starts failing, one when it recovers.

The SDK's exporters log every failed batch (each retry, each give-up, the
periodic reader's traceback): with the collector down that is several long
lines a minute, forever. :class:`Outage` wraps the exporters, hushes their
loggers, and reports the change of state instead, as the PostgreSQL store
does for its connection. After :meth:`Outage.close` every export fails at
once, so exiting never waits on a collector that is gone.

Imported only by :func:`backrun.observability.otlp.build_otlp`, once the SDK
is known to be installed.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["Outage", "QuietMetricExporter", "QuietSpanExporter"]

log = logging.getLogger("backrun.observability")

# The loggers the SDK reports each failed export on.
_NOISY = (
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.sdk.trace.export",
)
_REASON_WIDTH = 100
# "... NewConnectionError(...: [Errno 111] Connection refused'))" -> the OS's words.
_OS_ERROR = re.compile(r"\[Errno -?\d+\] ([^'\"()]+)")


class _Hush(logging.Filter):
    """Keep the last exporter message as the outage's reason; let none through."""

    def __init__(self, outage: Outage) -> None:
        super().__init__()
        self.outage = outage

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            self.outage.note(record)
        return False


class Outage:
    """The export state shared by the span and metric exporters of one endpoint.

    Args:
        endpoint: shown in the log lines.
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.failures = 0
        self.failing = False
        self.closed = threading.Event()
        self._reason = ""
        self._lock = threading.Lock()
        self._hush = _Hush(self)
        for name in _NOISY:
            logging.getLogger(name).addFilter(self._hush)

    def note(self, record: logging.LogRecord) -> None:
        """Remember why the exporter failed: its first message of the outage, shortened."""
        text = record.getMessage().strip().splitlines()
        if text and not self._reason:
            cause = _OS_ERROR.search(text[0])
            line = cause.group(1).strip() if cause else text[0]
            reason = line if len(line) <= _REASON_WIDTH else line[: _REASON_WIDTH - 3] + "..."
            with self._lock:
                self._reason = reason

    def failed(self, what: str) -> None:
        """An export failed: log once per outage."""
        with self._lock:
            self.failures += 1
            first = not self.failing
            self.failing = True
            reason = self._reason or "no reason given"
        if first and not self.closed.is_set():
            log.warning(
                "OTLP export to %s failing (%s: %s); retrying quietly, one line on recovery",
                self.endpoint,
                what,
                reason,
            )

    def succeeded(self) -> None:
        """An export went out: log the recovery if there was an outage."""
        with self._lock:
            recovered = self.failing
            failures, self.failures = self.failures, 0
            self.failing = False
            self._reason = ""
        if recovered:
            log.warning(
                "OTLP export to %s recovered after %d failed export(s)", self.endpoint, failures
            )

    def close(self) -> None:
        """From now on exports fail at once and quietly; the loggers stay hushed."""
        self.closed.set()


class QuietSpanExporter(SpanExporter):
    """A span exporter reporting through an :class:`Outage`."""

    def __init__(self, inner: SpanExporter, outage: Outage) -> None:
        self.inner = inner
        self.outage = outage

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export unless closed; report the outcome."""
        if self.outage.closed.is_set():
            return SpanExportResult.FAILURE
        result = self.inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            self.outage.succeeded()
        else:
            self.outage.failed("spans")
        return result

    def shutdown(self) -> None:
        """Stop the inner exporter (this also cuts its retry wait short)."""
        self.outage.close()
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered here."""
        return bool(self.inner.force_flush(timeout_millis))


class QuietMetricExporter(MetricExporter):
    """A metric exporter reporting through an :class:`Outage`."""

    def __init__(self, inner: MetricExporter, outage: Outage) -> None:
        super().__init__(
            preferred_temporality=getattr(inner, "_preferred_temporality", None),
            preferred_aggregation=getattr(inner, "_preferred_aggregation", None),
        )
        self.inner = inner
        self.outage = outage

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Export unless closed; report the outcome."""
        if self.outage.closed.is_set():
            return MetricExportResult.FAILURE
        result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        if result is MetricExportResult.SUCCESS:
            self.outage.succeeded()
        else:
            self.outage.failed("metrics")
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Nothing is buffered here."""
        return bool(self.inner.force_flush(timeout_millis))

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Stop the inner exporter (this also cuts its retry wait short)."""
        self.outage.close()
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)
