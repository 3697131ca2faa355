"""Observability, on by default: OpenTelemetry traces and metrics, Prometheus metrics.

``Engine(middleware=None)`` uses :func:`default_middleware`. Importing this
package registers nothing and starts nothing: metrics are created in a
registry when a middleware first uses it, exporters only by
:func:`~backrun.observability.otlp.configure_otlp`, and the HTTP endpoint
only by :func:`serve_metrics`.
"""

from __future__ import annotations

from backrun.middleware import Middleware

from .metrics import (
    DEFAULT_BUCKETS,
    MetricsMiddleware,
    MetricsServer,
    QueueCollector,
    register_queue_collector,
    serve_metrics,
)
from .otel_metrics import OtelMetricsMiddleware
from .otlp import OtlpExport, configure_otlp
from .tracing import TracingMiddleware

__all__ = [
    "DEFAULT_BUCKETS",
    "MetricsMiddleware",
    "MetricsServer",
    "OtelMetricsMiddleware",
    "OtlpExport",
    "QueueCollector",
    "TracingMiddleware",
    "configure_otlp",
    "default_middleware",
    "register_queue_collector",
    "serve_metrics",
]


def default_middleware() -> list[Middleware]:
    """The default stack, outermost first: tracing, Prometheus metrics, OpenTelemetry metrics.

    Tracing is outermost so the other layers' work, and the handler, run
    inside the attempt's span. Fresh instances each call; the Prometheus
    metrics go to the global registry (shared, never duplicated).
    """
    return [TracingMiddleware(), MetricsMiddleware(), OtelMetricsMiddleware()]
