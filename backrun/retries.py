"""RetryPolicy: how many attempts, how long between them, which errors retry."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import tenacity
from tenacity.retry import retry_base
from tenacity.wait import wait_base

from .errors import DoNotRetry

__all__ = ["DEFAULT_JOB_TIMEOUT", "DEFAULT_MAX_RETRIES", "RetryPolicy"]

DEFAULT_MAX_RETRIES = 3
"""Retries after a failed first attempt, unless a policy says otherwise (the one place)."""

DEFAULT_JOB_TIMEOUT = timedelta(minutes=15)
"""How long one attempt may run, unless a policy says otherwise (the one place)."""


def _default_wait() -> wait_base:
    # 2 s, 4 s, 8 s ... capped at 5 minutes, plus up to 1 s of jitter; built from
    # parts every supported tenacity has (wait_exponential_jitter's arguments moved).
    return tenacity.wait_exponential(multiplier=2, max=300) + tenacity.wait_random(0, 1)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how a failed attempt is retried.

    A retry is a persisted reschedule: the job goes back to SCHEDULED with a
    later ``run_at`` and the worker slot is free meanwhile. After the last
    attempt the job is DEAD with every attempt's error kept.

    Args:
        max_retries: attempts after the first (default
            :data:`DEFAULT_MAX_RETRIES`, 3: up to 4 attempts).
        wait: a tenacity wait strategy giving the delay before each retry;
            default exponential with jitter, 2 s initial, 5 minutes at most.
        retry_on: exception types that are retried, or a tenacity retry
            predicate; ``None`` (the default) retries every error.
            :class:`~backrun.DoNotRetry` is never retried.
        timeout: how long one attempt may run (default
            :data:`DEFAULT_JOB_TIMEOUT`, 15 minutes), or ``None`` for no limit.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    wait: wait_base = field(default_factory=_default_wait)
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | retry_base | None = None
    timeout: timedelta | None = DEFAULT_JOB_TIMEOUT

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise TypeError("max_retries must be an int")
        if self.max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        if self.timeout is not None and self.timeout <= timedelta(0):
            raise ValueError("timeout must be positive (or None for no limit)")

    @property
    def max_attempts(self) -> int:
        """The first attempt plus the retries."""
        return self.max_retries + 1

    def _state(self, attempt: int, error: BaseException) -> tenacity.RetryCallState:
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        outcome = tenacity.Future(attempt)
        outcome.set_exception(error)
        state.outcome = outcome
        return state

    def should_retry(self, error: BaseException, attempt: int, max_attempts: int) -> bool:
        """True if ``error`` from attempt number ``attempt`` earns another attempt."""
        if isinstance(error, DoNotRetry) or attempt >= max_attempts:
            return False
        retry_on = self.retry_on
        if retry_on is None:
            return True
        if isinstance(retry_on, retry_base):
            return bool(retry_on(self._state(attempt, error)))
        return isinstance(error, retry_on)

    def delay(self, error: BaseException, attempt: int) -> timedelta:
        """How long to wait after failed attempt number ``attempt``."""
        seconds = float(self.wait(self._state(attempt, error)))
        return timedelta(seconds=max(seconds, 0.0))
