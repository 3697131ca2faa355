"""OpenTelemetry tracing: a PRODUCER span per enqueue, a CONSUMER span per attempt.

Depends on opentelemetry-api only. Without an SDK (no tracer provider set)
the middleware creates no spans; it still carries an incoming trace context
along (a job enqueued inside a traced request keeps its ``traceparent``).
"""

from __future__ import annotations

import os
import time

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.environment_variables import OTEL_PYTHON_TRACER_PROVIDER
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer

from backrun.context import JobContext
from backrun.errors import JobTimeout
from backrun.jobs import Job, JobState, Outcome, Progress
from backrun.limits import took_wait
from backrun.middleware import EnqueueNext, Middleware, ProcessNext

from ._common import error_type, library_version, messaging_attributes
from ._inflight import Inflight, InflightTable

__all__ = ["TracingMiddleware"]

_NOOP_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)

# Read once: see _no_global_provider.
_ENVIRONMENT_NAMES_PROVIDER = OTEL_PYTHON_TRACER_PROVIDER in os.environ
_UNKNOWN = object()


def _no_global_provider() -> bool:
    """True when no global tracer provider is set, as ``get_tracer_provider`` would find.

    ``trace.get_tracer_provider()`` looks ``OTEL_PYTHON_TRACER_PROVIDER`` up in
    ``os.environ`` on every call until a provider is set, and a miss raises and
    catches a KeyError: that was most of an untraced enqueue's tracing cost.
    The variable is read once here (it configures a process at start); an
    OpenTelemetry that no longer has ``_TRACER_PROVIDER`` gets the public call.
    """
    return not _ENVIRONMENT_NAMES_PROVIDER and getattr(trace, "_TRACER_PROVIDER", _UNKNOWN) is None


# At worker stop, a span whose handler returned this many seconds ago and
# whose outcome was never recorded (the claim was lost) is ended anyway.
_UNRECORDED_AFTER = 5.0


class TracingMiddleware(Middleware):
    """Traces jobs with OpenTelemetry, following the messaging semantic conventions.

    ``enqueue`` opens a PRODUCER span ``send <queue>`` and stores its context
    in ``job.headers`` with the global propagator (W3C ``traceparent``, plus
    baggage). Each attempt runs inside a CONSUMER span ``process <queue>``, a
    child of that context (or, with ``use_links=True``, the root of a new
    trace linked to it), which is the current span while the handler runs,
    so the handler's own spans and logs nest under it. A failed attempt has
    its exception recorded, status ERROR and ``error.type``; unless the
    attempt succeeded, the attribute ``backrun.job.outcome`` (retried, dead,
    cancelled, released) says what the worker made of it. A timed-out attempt's span ends when the
    timeout is recorded, with ``error.type`` ``backrun.errors.JobTimeout``.

    Args:
        tracer_provider: where spans go; default the global provider, looked
            up until one is set, so an SDK configured after the engine is
            built is still used.
        use_links: link each attempt's span to the send span instead of
            making it a child; semantic conventions suggest it when jobs wait
            long (the request's trace then does not stretch over hours).
    """

    def __init__(
        self, tracer_provider: trace.TracerProvider | None = None, use_links: bool = False
    ) -> None:
        self.use_links = use_links
        self._provider = tracer_provider
        self._tracer: Tracer | None = None
        if tracer_provider is not None and not isinstance(tracer_provider, _NOOP_PROVIDERS):
            self._tracer = tracer_provider.get_tracer("backrun", library_version())
        self._inflight: InflightTable[Span] = InflightTable(on_dropped=_end_dropped)

    def _get_tracer(self) -> Tracer | None:
        """The tracer, or ``None`` while tracing is a no-op (no SDK configured)."""
        tracer = self._tracer
        if tracer is None and self._provider is None:
            provider = _global_provider()
            if provider is not None:
                tracer = self._tracer = provider.get_tracer("backrun", library_version())
        return tracer

    # -- producer ----------------------------------------------------------

    def enqueue(self, job: Job, call_next: EnqueueNext) -> Job:
        """Open ``send <queue>``, inject its context into ``job.headers``, persist."""
        tracer = self._tracer
        if tracer is None and self._provider is None and not _no_global_provider():
            tracer = self._get_tracer()
        if tracer is None:
            if otel_context.get_current():  # empty unless something set a span or baggage
                carrier = dict(job.headers)
                propagate.inject(carrier)  # an incoming context travels on
                if len(carrier) != len(job.headers):
                    job = job.replace(headers=carrier)
            return call_next(job)
        attributes = dict(messaging_attributes("send", job.queue, job.handler))
        attributes["messaging.message.id"] = job.id
        span = tracer.start_span(f"send {job.queue}", kind=SpanKind.PRODUCER, attributes=attributes)
        ctx = trace.set_span_in_context(span)
        token = otel_context.attach(ctx)
        try:
            carrier = dict(job.headers)
            propagate.inject(carrier, context=ctx)
            return call_next(job.replace(headers=carrier))
        except BaseException as exc:
            _fail(span, exc)
            raise
        finally:
            otel_context.detach(token)
            span.end()

    # -- consumer ----------------------------------------------------------

    def process(self, ctx: JobContext, call_next: ProcessNext) -> None:
        """Run the attempt inside a ``process <queue>`` span, current for the handler."""
        job = ctx.job
        tracer = self._tracer
        # _no_global_provider, inline: no call per attempt without an SDK.
        sdk_maybe = (
            _ENVIRONMENT_NAMES_PROVIDER or getattr(trace, "_TRACER_PROVIDER", _UNKNOWN) is not None
        )
        if tracer is None and self._provider is None and sdk_maybe:
            tracer = self._get_tracer()
        if tracer is None:
            if not job.headers:
                call_next(ctx)
                return
            token = otel_context.attach(propagate.extract(job.headers))
            try:
                call_next(ctx)
            finally:
                otel_context.detach(token)
            return
        parent = propagate.extract(job.headers) if job.headers else otel_context.Context()
        attributes = dict(messaging_attributes("process", job.queue, job.handler))
        attributes["messaging.message.id"] = job.id
        attributes["messaging.client.id"] = ctx.worker_id
        attributes["backrun.job.attempt"] = ctx.attempt
        links: list[Link] | None = None
        span_parent = parent
        if self.use_links:
            sent = trace.get_current_span(parent).get_span_context()
            links = [Link(sent)] if sent.is_valid else None
            span_parent = trace.set_span_in_context(trace.INVALID_SPAN, parent)
        span = tracer.start_span(
            f"process {job.queue}",
            context=span_parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        if job.limited:
            waited = took_wait(job.id)
            if waited is not None and job.started_at is not None:
                seconds = max((job.started_at - waited.since).total_seconds(), 0.0)
                span.add_event(
                    "backrun.limit_waited",
                    {"backrun.limit": waited.limit, "backrun.limit.waited_seconds": seconds},
                )
        entry = self._inflight.begin(ctx, span)
        ctx.on_progress(lambda progress: span.add_event("progress", _progress_attributes(progress)))
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            call_next(ctx)
        except BaseException as exc:
            if not entry.finished:
                _fail(span, exc)
            raise
        finally:
            otel_context.detach(token)
            self._inflight.handler_returned(entry)

    def attempt_finished(self, ctx: JobContext, job: Job, error: BaseException | None) -> None:
        """End the attempt's span with the outcome the worker recorded."""
        if not self._inflight:  # no span is open (no SDK): nothing to end, no lock to take
            return
        entry, running = self._inflight.attempt_finished(ctx)
        if entry is None:
            return
        span = entry.value
        if job.state is not JobState.SUCCEEDED:  # success is the status-UNSET default
            span.set_attribute("backrun.job.outcome", _outcome_name(job.state))
        if running and error is not None:
            # The worker gave up on a handler still running (a timeout): the
            # span says so now rather than whenever the thread returns.
            _fail(span, error)
        _end(span, entry)

    def worker_stopping(self, worker: object) -> None:
        """End spans whose handler returned long ago but whose outcome was never recorded."""
        for entry in self._inflight.drain(min_age=_UNRECORDED_AFTER):
            _end_dropped(entry)


def _global_provider() -> trace.TracerProvider | None:
    """The global tracer provider once a real one is set, else ``None``."""
    if _no_global_provider():
        return None
    provider = trace.get_tracer_provider()
    return None if isinstance(provider, _NOOP_PROVIDERS) else provider


def _progress_attributes(progress: Progress) -> dict[str, float | str]:
    attributes: dict[str, float | str] = {"backrun.progress.done": progress.done}
    if progress.total is not None:
        attributes["backrun.progress.total"] = progress.total
    if progress.message is not None:
        attributes["backrun.progress.message"] = progress.message
    return attributes


def _fail(span: Span, error: BaseException) -> None:
    kind = error_type(error)
    span.record_exception(error, escaped=True)
    span.set_attribute("error.type", kind)
    if isinstance(error, JobTimeout):
        span.set_attribute("backrun.job.timed_out", True)
    span.set_status(Status(StatusCode.ERROR, f"{kind}: {error}"))


def _end(span: Span, entry: Inflight[Span]) -> None:
    if entry.end is None:
        span.end()
        return
    # The span covers the handler call: it ends when the handler returned,
    # though the outcome is only known once the worker recorded it.
    elapsed_ns = int((time.perf_counter() - entry.end) * 1e9)
    span.end(end_time=time.time_ns() - elapsed_ns)


def _end_dropped(entry: Inflight[Span]) -> None:
    entry.value.set_attribute("backrun.job.outcome", "unrecorded")
    _end(entry.value, entry)


def _outcome_name(state: JobState) -> str:
    try:
        return Outcome.of(state).value
    except ValueError:
        return state.value
