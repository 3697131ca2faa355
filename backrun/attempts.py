"""One attempt of a job: run it through the chain, decide its outcome, record it.

Only this module decides a job's next state after an attempt: succeeded, a
persisted retry (SCHEDULED with a later ``run_at``), DEAD, CANCELLED, or
released to QUEUED at shutdown. Every write goes through ``storage.update``
with the attempt's claim token, so a late or stale writer changes nothing.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, Literal, Protocol

from .clock import Clock
from .context import EngineHandle, JobContext, _current
from .errors import DoNotRetry, LeaseLost, UnknownHandler
from .handlers import HandlerSpec
from .jobs import Job, JobError, JobState, Progress, job_of_fields
from .limits import LimitedClaim
from .middleware import Middleware, overrides
from .results import announce
from .retries import RetryPolicy
from .serialization import DEFAULT_MAX_PAYLOAD_BYTES
from .storage.base import Storage
from .versions import NewerVersion, defer_newer, newer_version

__all__ = ["Attempt", "AttemptRecorder", "HandlerLookup", "Slot", "describe_error"]

log = logging.getLogger("backrun.worker")

_MAX_TRACEBACK_CHARS = 16_000


class Slot:
    """One slot thread of a worker; ``abandoned`` once its attempt timed out."""

    __slots__ = ("abandoned", "thread")

    def __init__(self) -> None:
        self.abandoned = False
        self.thread: threading.Thread | None = None


class HandlerLookup(Protocol):
    """Where a recorder finds a job's handler (the engine's registry)."""

    def get(self, name: str) -> HandlerSpec | None:
        """The handler registered under ``name``, or ``None``."""
        ...


_FinishedHook = Callable[[JobContext, Job, "BaseException | None"], None]


class _Outcome(enum.Enum):
    GAVE_UP = "gave up"


_GAVE_UP: Final = _Outcome.GAVE_UP
"""From ``_persist``: the write did not land (patience ran out, or the worker was forced)."""


class Attempt:
    """An attempt in flight: its job, context and the slot running it.

    ``settle()`` returns True exactly once: the handler's own thread, the
    timeout and the shutdown release race for it, and only the winner records.
    """

    __slots__ = ("_once", "ctx", "job", "slot", "stop_requested")

    def __init__(self, job: Job, ctx: JobContext, slot: Slot | None) -> None:
        self.job = job
        self.ctx = ctx
        self.slot = slot
        self.stop_requested = False
        self._once = threading.Lock()

    def settle(self) -> bool:
        """Claim the right to record this attempt; True for the first caller only."""
        return self._once.acquire(blocking=False)


def describe_error(error: BaseException, attempt: int, at: datetime) -> JobError:
    """Turn an exception into the persisted record of a failed attempt."""
    cls = type(error)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    text = "".join(traceback.format_exception(error))
    if len(text) > _MAX_TRACEBACK_CHARS:
        text = "...\n" + text[-_MAX_TRACEBACK_CHARS:]
    return JobError(type=name, message=str(error), traceback=text, attempt=attempt, at=at)


class AttemptRecorder:
    """Runs attempts and records their outcomes for one worker.

    It knows nothing of the worker: each collaborator is passed in, narrowly.

    Args:
        engine: handed to each attempt's :class:`JobContext`.
        storage: where outcomes are written (``update`` under the claim's token).
        clock: the engine's clock.
        handlers: where a job's handler and retry policy are looked up.
        default_policy: the retry policy of jobs whose handler has none.
        worker_id: stamped on each attempt's context.
        middleware: whose ``attempt_finished``/``orphan_recovered`` hooks hear outcomes.
        forced: true once the worker is forced to stop (a write then gives up).
        max_result_bytes: the largest encoded return value stored with a success.
    """

    def __init__(
        self,
        *,
        engine: EngineHandle,
        storage: Storage,
        clock: Clock,
        handlers: HandlerLookup,
        default_policy: RetryPolicy,
        worker_id: str,
        middleware: Sequence[Middleware],
        forced: Callable[[], bool],
        max_result_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.engine = engine
        self._max_result_bytes = max_result_bytes
        self.storage = storage
        self.clock = clock
        self._registry = handlers
        self._default_policy = default_policy
        self._worker_id = worker_id
        self._forced = forced
        self._finished_hooks: list[_FinishedHook] = [
            m.attempt_finished for m in middleware if overrides(m, "attempt_finished")
        ]
        self._progress_sink = self._write_progress  # bound once, not per attempt
        self._orphan_hooks = [m for m in middleware if overrides(m, "orphan_recovered")]
        self._deferred_hooks = [m for m in middleware if overrides(m, "job_deferred")]

    def policy_for(self, job: Job) -> RetryPolicy:
        """The retry policy that governs ``job``: its handler's, else the engine's."""
        spec = self._registry.get(job.handler)
        if spec is not None and spec.retry is not None:
            return spec.retry
        return self._default_policy

    def begin(self, job: Job, slot: Slot | None) -> Attempt:
        """Build the context of a freshly claimed job."""
        timeout = self.policy_for(job).timeout
        started = job.started_at or self.clock.now()
        ctx = JobContext(
            job=job,
            attempt=job.attempts,
            worker_id=self._worker_id,
            deadline=None if timeout is None else started + timeout,
            engine=self.engine,
        )
        ctx.progress_sink = self._progress_sink
        return Attempt(job, ctx, slot)

    def _write_progress(self, ctx: JobContext, progress: Progress) -> None:
        """Store an attempt's progress report (``ctx.progress``, already throttled)."""
        try:
            self.storage.record_progress(ctx.job, progress)
        except LeaseLost:
            pass  # the attempt's end is recorded (or refused) elsewhere
        except Exception as exc:
            log.warning("job %s: could not record its progress: %s", ctx.job.id, exc)

    def invoke(self, ctx: JobContext) -> None:
        """The innermost link of the chain: run the handler itself."""
        spec = self._registry.get(ctx.job.handler)
        if spec is None:
            raise UnknownHandler(
                f"no handler named {ctx.job.handler!r} is registered in this worker"
            )
        ctx.returned = spec.invoke(ctx.job.payload, ctx)

    def execute(
        self, attempt: Attempt, chain: Callable[[JobContext], None]
    ) -> BaseException | None:
        """Run the chain in this thread; return what it raised, if anything.

        ``SystemExit`` and ``KeyboardInterrupt`` from a handler fail the job;
        they never stop the worker.
        """
        ctx = attempt.ctx
        job = ctx.job
        spec = self._registry.get(job.handler)
        if spec is not None and job.version > spec.version:  # newer_version's test, inlined
            return newer_version(job, spec)  # not run: no middleware, no span; finish() defers it
        token = _current.set(ctx)
        try:
            chain(ctx)
        except BaseException as exc:
            return exc
        finally:
            _current.reset(token)
        return None

    def outcome(
        self, attempt: Attempt, error: BaseException | None, now: datetime, result: Any = None
    ) -> Job:
        """The record that ends ``attempt``: success, retry, DEAD or CANCELLED.

        A job whose cancel was requested during the attempt ends CANCELLED
        however the handler ended, returning included: the caller asked for
        it to stop, and a handler that saw ``ctx.cancelled`` and returned
        early did not do its work. (A timeout or a shutdown also sets
        ``ctx.cancelled``; those are recorded as a timeout or a release.)
        """
        job = attempt.job
        if attempt.ctx.latest_progress is not None:
            job = job.replace(progress=attempt.ctx.latest_progress)
        if attempt.stop_requested:
            errors = job.errors
            if error is not None:
                errors = (*errors, describe_error(error, job.attempts, now))
            return job.replace(
                state=JobState.CANCELLED, errors=errors, finished_at=now, lease_expires_at=None
            )
        if error is None:
            # The result rides in the one write that records the success.
            fields = job.__dict__.copy()  # job.replace(...), without its keyword dict and check
            fields["state"] = JobState.SUCCEEDED
            fields["finished_at"] = now
            fields["lease_expires_at"] = None
            fields["result"] = result
            return job_of_fields(fields)
        errors = (*job.errors, describe_error(error, job.attempts, now))
        policy = self.policy_for(job)
        retryable = not isinstance(error, UnknownHandler | DoNotRetry)
        if retryable and policy.should_retry(error, job.attempts, job.max_attempts):
            return job.replace(
                state=JobState.SCHEDULED,
                errors=errors,
                run_at=now + policy.delay(error, job.attempts),
                lease_expires_at=None,
            )
        return job.replace(
            state=JobState.DEAD, errors=errors, finished_at=now, lease_expires_at=None
        )

    def finish(
        self, attempt: Attempt, error: BaseException | None, patience: float | None = None
    ) -> bool:
        """Record how ``attempt`` ended and tell the middleware.

        Store errors are retried with backoff, for ``patience`` seconds (default:
        until the store recovers or the worker is forced to stop).

        Returns:
            False if the store still refused the write when patience ran out.
        """
        if isinstance(error, NewerVersion):
            return self._defer(attempt, error, patience)
        if error is not None and not isinstance(error, Exception):
            log.warning("job %s raised %s; recorded as a failure", attempt.job.id, type(error))
        result = None
        if error is None and not attempt.stop_requested:
            result, error = self._stored_result(attempt)
        recorded = self._persist(self.outcome(attempt, error, self.clock.now(), result), patience)
        if recorded is _GAVE_UP:
            return False
        if recorded is not None:
            self._announce(attempt, recorded, error)
        return True

    def finish_and_claim(
        self,
        attempt: Attempt,
        error: BaseException | None,
        write: Callable[[Job], LimitedClaim],
        now: datetime | None = None,
    ) -> LimitedClaim | None:
        """As :meth:`finish`, but the record is written by ``write``, which also claims.

        ``write`` is one store call (:meth:`Claimer.finish_and_claim`). A
        deferral, or a write that fails with a store error, is recorded as
        :meth:`finish` does, patiently, and claims nothing. ``now`` (default:
        the clock's) is the outcome's time; the worker passes its claim's.

        Returns:
            What ``write`` claimed (empty if the claim was lost: nothing was
            written), or ``None`` if ``write`` was not used.
        """
        if isinstance(error, NewerVersion):
            self._defer(attempt, error, None)
            return None
        if error is not None and not isinstance(error, Exception):
            log.warning("job %s raised %s; recorded as a failure", attempt.job.id, type(error))
        result = None
        if error is None and not attempt.stop_requested:
            result, error = self._stored_result(attempt)
        record = self.outcome(attempt, error, self.clock.now() if now is None else now, result)
        try:
            claimed = write(record)
        except LeaseLost:
            log.info("job %s: claim lost before its attempt was recorded", record.id)
            return LimitedClaim([])
        except Exception:
            recorded = self._persist(record)
            if isinstance(recorded, Job):
                self._announce(attempt, recorded, error)
            return None
        announce(record)
        self._announce(attempt, record, error)
        return claimed

    def _stored_result(self, attempt: Attempt) -> tuple[Any, BaseException | None]:
        """The JSON form of what the handler returned, or the error that fails the attempt."""
        spec = self._registry.get(attempt.job.handler)
        value = attempt.ctx.returned
        if spec is None:
            return None, None
        try:
            return spec.dump_result(value, self._max_result_bytes), None
        except Exception as exc:
            return None, exc

    def _defer(self, attempt: Attempt, newer: NewerVersion, patience: float | None) -> bool:
        """Give a job of a newer payload version back, uncharged, for a newer worker."""
        deferred = defer_newer(attempt.job, self.clock.now())
        recorded = self._persist(deferred, patience)
        if recorded is _GAVE_UP:
            return False
        if recorded is not None:
            log.warning("%s; left for a newer worker until %s", newer, deferred.run_at)
            for layer in self._deferred_hooks:
                _safely(layer.job_deferred, recorded, "newer_version")
        return True

    def release(self, attempt: Attempt) -> None:
        """Give a still-running job back at shutdown, without charging the attempt."""
        job = attempt.job
        if attempt.stop_requested:
            new = job.replace(
                state=JobState.CANCELLED, finished_at=self.clock.now(), lease_expires_at=None
            )
        else:
            new = job.replace(
                state=JobState.QUEUED,
                attempts=max(job.attempts - 1, 0),
                started_at=None,
                lease_expires_at=None,
            )
        if attempt.ctx.latest_progress is not None:
            new = new.replace(progress=attempt.ctx.latest_progress)
        recorded = self._persist(new, patience=5.0)
        if isinstance(recorded, Job):
            log.info("released job %s back to %s", job.id, recorded.state.value)
            self._announce(attempt, recorded, None)

    def give_back(self, job: Job) -> None:
        """Return a job claimed but not started, uncharged and in its place (``run_at`` kept).

        Retries store errors until the write lands: a job left RUNNING under a
        live worker that does not run it would never be recovered.
        """
        new = job.replace(
            state=JobState.QUEUED,
            attempts=max(job.attempts - 1, 0),
            started_at=None,
            lease_expires_at=None,
        )
        self._persist(new)

    def orphan_recovered(self, job: Job) -> None:
        """Tell the middleware a dead worker's job was rescued."""
        for layer in self._orphan_hooks:
            _safely(layer.orphan_recovered, job)

    def _announce(self, attempt: Attempt, job: Job, error: BaseException | None) -> None:
        ctx = attempt.ctx
        for hook in self._finished_hooks:  # as _safely does, without its call per hook
            try:
                hook(ctx, job, error)
            except Exception:
                log.exception("middleware hook %r failed", hook)

    def _persist(
        self, job: Job, patience: float | None = None
    ) -> Job | Literal[_Outcome.GAVE_UP] | None:
        """Write ``job``; retry store errors with backoff until it lands.

        Returns the record written; ``None`` if the claim was lost (someone
        else owns the job now: nothing is written); ``_GAVE_UP`` if patience ran
        out or the worker was forced to stop (the job stays RUNNING under this
        worker's claim and is recovered as an orphan once the worker is gone).
        """
        delay = 0.05
        give_up = None if patience is None else time.monotonic() + patience
        failing = False
        while True:
            try:
                self.storage.update(job)
            except LeaseLost:
                log.info("job %s: claim lost before its attempt was recorded", job.id)
                return None
            except Exception:
                if not failing:
                    log.exception("job %s: could not record its attempt; retrying", job.id)
                    failing = True
                out_of_time = give_up is not None and time.monotonic() + delay > give_up
                if out_of_time or self._forced():
                    log.error("job %s: the store refuses the write; will retry later", job.id)
                    return _GAVE_UP
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if failing:
                log.warning("job %s: store is writable again; attempt recorded", job.id)
            announce(job)
            return job


def _safely(hook: Callable[..., Any], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        log.exception("middleware hook %r failed", hook)
