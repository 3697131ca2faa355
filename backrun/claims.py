"""How a worker slot claims: plainly, or through the store's limited claim.

A worker whose engine has no limited handler calls :meth:`Storage.claim`
exactly as before. Otherwise every claim is :meth:`Storage.claim_limited`
with the handlers' limits, and what it leaves waiting is reported once per
job to the middleware (``job_waited``: metrics) and kept for the attempt's
span (:func:`backrun.limits.note_wait`).

An idle slot whose claim skipped limited jobs must not spin on them: a due
job makes ``next_run_at`` lie in the past. It sleeps until the earliest rate
window opens, a store notification (a slot freed, a job added) or its poll
interval, whichever is first.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from .handlers import HandlerRegistry
from .jobs import Job
from .limits import HandlerLimits, LimitedClaim, note_wait
from .middleware import Middleware, overrides
from .storage.base import Storage

__all__ = ["MAX_IDLE_SECONDS", "Claimer", "idle_seconds", "idle_timeout", "registry_limits"]

log = logging.getLogger("backrun.worker")


class _Clock(Protocol):
    def now(self) -> datetime:
        """The current time (aware UTC)."""
        ...


def registry_limits(registry: HandlerRegistry) -> dict[str, HandlerLimits]:
    """The limits of every registered handler that has some, by name."""
    found: dict[str, HandlerLimits] = {}
    for name in registry.names():
        spec = registry.get(name)
        if spec is not None and spec.limits is not None:
            found[name] = spec.limits
    return found


class Claimer:
    """Claims for one worker's slots (thread-safe: it keeps no per-claim state)."""

    def __init__(
        self,
        storage: Storage,
        registry: HandlerRegistry,
        middleware: Sequence[Middleware],
        *,
        worker_id: str,
        lease: timedelta,
    ) -> None:
        self._storage = storage
        self._registry = registry
        self._listeners = [m for m in middleware if overrides(m, "job_waited")]
        self._worker_id = worker_id
        self._lease = lease
        self._seen_names = -1
        self._limits: dict[str, HandlerLimits] = {}

    def limits(self) -> dict[str, HandlerLimits]:
        """The registry's limits (re-read when handlers were added)."""
        names = self._registry.count()
        if names != self._seen_names:
            self._limits = registry_limits(self._registry)
            self._seen_names = names
            if self._limits and not self._storage.capabilities.limits:
                raise TypeError(
                    f"{type(self._storage).__name__} cannot enforce handler limits "
                    f"(max_concurrency, rate_limit): {sorted(self._limits)}"
                )
        return self._limits

    def claim(
        self, *, queues: Collection[str] | None, now: datetime, limit: int = 1
    ) -> LimitedClaim:
        """Claim up to ``limit`` jobs for slots, honouring limits when there are any."""
        limits = self.limits()
        if not limits:
            jobs: list[Job] = self._storage.claim(
                queues=queues, limit=limit, now=now, worker_id=self._worker_id, lease=self._lease
            )
            return LimitedClaim(jobs)
        return self._report(
            self._storage.claim_limited(
                queues=queues,
                limit=limit,
                now=now,
                worker_id=self._worker_id,
                lease=self._lease,
                limits=limits,
            ),
            now,
        )

    def finish_and_claim(
        self, record: Job, *, queues: Collection[str] | None, now: datetime, limit: int = 1
    ) -> LimitedClaim:
        """Write a slot's finished attempt and claim its next jobs in one store call.

        Raises:
            LeaseLost: the attempt's claim was lost; nothing was written or claimed.
            StorageError: the write failed; nothing was claimed.
        """
        limits = self.limits()
        result = self._storage.update_and_claim(
            record,
            queues=queues,
            limit=limit,
            now=now,
            worker_id=self._worker_id,
            lease=self._lease,
            limits=limits or None,
        )
        return self._report(result, now) if result.waiting else result

    def _report(self, result: LimitedClaim, now: datetime) -> LimitedClaim:
        """Tell the middleware of each job a limit holds back (once per job)."""
        for job_id, handler, limit in result.waiting:
            if note_wait(job_id, limit, now):
                for layer in self._listeners:
                    try:
                        layer.job_waited(job_id, handler, limit)
                    except Exception:
                        log.exception("middleware %r failed in job_waited", layer)
        return result


MAX_IDLE_SECONDS = 60.0
"""An idle slot looks again at least this often, whatever the store says."""


def idle_timeout(
    storage: Storage,
    queues: Collection[str] | None,
    result: LimitedClaim | None,
    *,
    now: datetime,
) -> float:
    """How long an idle slot sleeps: :func:`idle_seconds` capped by the store's poll interval.

    A store that cannot tell its next ``run_at`` is asked again in a second.
    """
    cap = MAX_IDLE_SECONDS
    if storage.poll_interval is not None:
        cap = min(cap, storage.poll_interval)
    try:
        next_run = storage.next_run_at(queues=queues)
    except Exception:
        log.exception("next_run_at failed")
        return 1.0
    return idle_seconds(result, now=now, next_run=next_run, cap=cap)


def idle_seconds(
    result: LimitedClaim | None, *, now: datetime, next_run: datetime | None, cap: float
) -> float:
    """How long an idle slot sleeps after ``result`` found nothing it may start.

    ``next_run`` (the store's earliest waiting ``run_at``) is ignored when it
    is due and the claim left limited jobs waiting: those are what is due.
    """
    timeout = cap
    held = result is not None and bool(result.waiting)
    if next_run is not None and not (held and next_run <= now):
        timeout = min(timeout, max((next_run - now).total_seconds(), 0.001))
    if result is not None and result.retry_at is not None:
        timeout = min(timeout, max((result.retry_at - now).total_seconds(), 0.001))
    return timeout
