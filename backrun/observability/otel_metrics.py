"""OpenTelemetry metrics: the messaging semantic-convention instruments.

For pipelines that are OpenTelemetry only (no Prometheus scrape). Depends on
opentelemetry-api only: without an SDK's ``MeterProvider`` the instruments are
no-ops; once one is set (globally, even after the engine is built, or passed
in) they record:

* ``messaging.client.sent.messages`` (counter, ``{message}``): jobs enqueued,
  with ``error.type`` when persisting failed;
* ``messaging.client.consumed.messages`` (counter, ``{message}``): attempts
  handed to a handler;
* ``messaging.process.duration`` (histogram, ``s``): how long each handler
  ran, with ``error.type`` when it raised.

Attributes: ``messaging.system="backrun"``, ``messaging.operation.type`` and
``messaging.operation.name`` (``send`` or ``process``),
``messaging.destination.name`` (the queue) and ``backrun.job.handler``.
"""

from __future__ import annotations

import time

from opentelemetry import metrics

from backrun.context import JobContext
from backrun.jobs import Job
from backrun.middleware import EnqueueNext, Middleware, ProcessNext

from ._common import error_type, library_version, messaging_attributes

__all__ = ["OtelMetricsMiddleware"]

# The semantic conventions' advice for messaging.process.duration.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


class OtelMetricsMiddleware(Middleware):
    """Records the OpenTelemetry messaging metrics (see the module docstring).

    A separate middleware from :class:`~backrun.observability.TracingMiddleware`
    so either can be removed alone; both are in the default stack.

    Args:
        meter_provider: where measurements go; default the global provider.
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter("backrun", library_version(), meter_provider=meter_provider)
        self._sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}", description="Jobs enqueued."
        )
        self._consumed = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Job attempts delivered to a handler.",
        )
        self._duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of handling one job attempt.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )

    def enqueue(self, job: Job, call_next: EnqueueNext) -> Job:
        """Count the job as sent (with ``error.type`` if persisting it failed)."""
        attributes = messaging_attributes("send", job.queue, job.handler)
        try:
            job = call_next(job)
        except BaseException as exc:
            self._sent.add(1, {**attributes, "error.type": error_type(exc)})
            raise
        self._sent.add(1, attributes)
        return job

    def process(self, ctx: JobContext, call_next: ProcessNext) -> None:
        """Count the delivery; time the handler."""
        consumed = self._consumed
        if getattr(consumed, "_real_instrument", consumed) is None:
            # The API's stand-in while no MeterProvider is set: it would drop
            # both measurements, so take none (they start once one is set).
            call_next(ctx)
            return
        job = ctx.job
        attributes = messaging_attributes("process", job.queue, job.handler)
        self._consumed.add(1, attributes)
        start = time.perf_counter()
        try:
            call_next(ctx)
        except BaseException as exc:
            elapsed = time.perf_counter() - start
            self._duration.record(elapsed, {**attributes, "error.type": error_type(exc)})
            raise
        self._duration.record(time.perf_counter() - start, attributes)
