"""Export traces and metrics over OTLP/HTTP when the environment asks for it.

Needs the ``otel`` extra (``pip install 'backrun[otel]'``): the SDK and the
OTLP/HTTP exporter are imported only inside :func:`configure_otlp`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace

__all__ = ["OtlpExport", "OtlpUnavailable", "configure_otlp"]

INSTALL_HINT = "pip install 'backrun[otel]'"


class OtlpUnavailable(ImportError, RuntimeError):
    """OTLP export was asked for but the ``otel`` extra (the SDK, the exporter) is missing."""


log = logging.getLogger("backrun.observability")

_lock = threading.Lock()
_active: OtlpExport | None = None


@dataclass
class OtlpExport:
    """The providers :func:`configure_otlp` installed; flush them before exiting.

    Attributes:
        tracer_provider: an SDK ``TracerProvider`` with a ``BatchSpanProcessor``.
        meter_provider: an SDK ``MeterProvider`` exporting periodically.
    """

    tracer_provider: Any
    meter_provider: Any
    exporters: list[Any] = field(default_factory=list)

    def flush(self, timeout_millis: int = 5000) -> bool:
        """Export every span and metric recorded so far; True if all went out in time."""
        spans = bool(self.tracer_provider.force_flush(timeout_millis))
        numbers = bool(self.meter_provider.force_flush(timeout_millis))
        return spans and numbers

    def close(self, timeout: float = 5.0) -> bool:
        """Flush for at most ``timeout`` seconds, then stop exporting: exit never waits longer.

        With the collector down the SDK would keep retrying each batch (and
        again at interpreter exit); after this, exports fail at once and
        what was not sent is dropped. Returns True if everything went out.
        """
        outcome: list[bool] = []
        flusher = threading.Thread(
            target=lambda: outcome.append(self.flush(int(timeout * 1000))),
            name="backrun-otlp-flush",
            daemon=True,
        )
        began = time.monotonic()
        flusher.start()
        flusher.join(timeout)
        for exporter in self.exporters:
            exporter.shutdown()  # wakes a retry that is waiting out its backoff
        flusher.join(max(0.0, min(1.0, timeout - (time.monotonic() - began))))
        return bool(outcome and outcome[0])

    def shutdown(self) -> None:
        """Flush, then stop the exporters; later spans are dropped. Idempotent."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _signal_url(base: str, signal: str) -> str:
    """``http://host:4318`` -> ``http://host:4318/v1/traces`` (like OTEL_EXPORTER_OTLP_ENDPOINT)."""
    suffix = f"/v1/{signal}"
    base = base.rstrip("/")
    return base if base.endswith(suffix) else base + suffix


def build_otlp(
    endpoint: str | None = None, *, service_name: str | None = None, export_interval: float = 60.0
) -> OtlpExport:
    """Build SDK providers exporting to ``endpoint`` without installing them globally.

    Args:
        endpoint: the collector's OTLP/HTTP base URL (``/v1/traces`` and
            ``/v1/metrics`` are appended); ``None`` lets the exporters read
            the standard ``OTEL_EXPORTER_OTLP_*`` variables.
        service_name: the ``service.name`` resource attribute; default
            ``OTEL_SERVICE_NAME``, else ``backrun``.
        export_interval: seconds between metric exports.
    """
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise OtlpUnavailable(
            f"OTLP export needs the OpenTelemetry SDK and OTLP exporter: {INSTALL_HINT}"
        ) from exc
    from ._otlp_outage import Outage, QuietMetricExporter, QuietSpanExporter

    attributes: dict[str, str] = {}
    if service_name is not None:
        attributes["service.name"] = service_name
    elif not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "backrun"
    resource = Resource.create(attributes)
    outage = Outage(
        endpoint
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or "the OTLP endpoint"
    )
    span_exporter = QuietSpanExporter(
        OTLPSpanExporter(endpoint=None if endpoint is None else _signal_url(endpoint, "traces")),
        outage,
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    metric_exporter = QuietMetricExporter(
        OTLPMetricExporter(endpoint=None if endpoint is None else _signal_url(endpoint, "metrics")),
        outage,
    )
    reader = PeriodicExportingMetricReader(
        metric_exporter, export_interval_millis=export_interval * 1000
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    return OtlpExport(tracer_provider, meter_provider, [span_exporter, metric_exporter])


def configure_otlp(
    environ: Mapping[str, str] | None = None, *, service_name: str | None = None
) -> OtlpExport | None:
    """Export over OTLP/HTTP if ``BACKRUN_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

    Sets the global tracer provider (a ``TracerProvider`` with a
    ``BatchSpanProcessor``) and meter provider, unless the application has
    set its own (then it owns export, and this returns ``None``). Calling it
    again returns the same export. Call :meth:`OtlpExport.flush` when the
    worker stops; the SDK also flushes at interpreter exit.

    Returns:
        The installed export, or ``None`` when nothing was configured.

    Raises:
        OtlpUnavailable: an endpoint is set but the ``otel`` extra is not
            installed (an ``ImportError``; nothing was changed).
    """
    global _active
    env = os.environ if environ is None else environ
    endpoint = env.get("BACKRUN_OTLP_ENDPOINT") or None
    if endpoint is None and not env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    with _lock:
        if _active is not None:
            return _active
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            log.info("a tracer provider is set already; backrun leaves OTLP export to it")
            return None
        export = build_otlp(endpoint, service_name=service_name)
        trace.set_tracer_provider(export.tracer_provider)
        metrics.set_meter_provider(export.meter_provider)  # refused if the app set one
        if metrics.get_meter_provider() is not export.meter_provider:
            export.meter_provider.shutdown()
        _active = export
        log.info("exporting traces and metrics over OTLP/HTTP to %s", endpoint or "(OTEL_*)")
        return export
