"""Limits on when a handler's jobs may start, and the records stores share for them.

``RateLimit`` and the handler attributes ``max_concurrency`` and
``concurrency_key`` are public; the rest is what a store needs to enforce them
inside its ``claim`` (:class:`HandlerLimits`, :class:`LimitedClaim`) and what
workers keep about jobs that waited (:func:`note_wait`, :func:`took_wait`).

Rate limits use a **sliding window**: a job of a rate-limited handler starts
only if fewer than ``n`` of the handler's jobs started in the ``per`` before
now. So any window of length ``per``, wherever it begins, holds at most ``n``
starts. Starts are counted per handler, over every process on the store.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypedDict

from .jobs import Job, JobState

__all__ = [
    "CONCURRENCY",
    "RATE",
    "HandlerLimits",
    "LimitOptions",
    "LimitedClaim",
    "RateLimit",
    "Wait",
    "check_unique_key",
    "forget_before",
    "group_hash",
    "handler_limits",
    "holds_key",
    "note_wait",
    "took_wait",
]

CONCURRENCY = "concurrency"
"""The ``limit`` label of a wait for a free concurrency slot."""
RATE = "rate"
"""The ``limit`` label of a wait for the rate window to allow another start."""

MAX_KEY_LENGTH = 1000

ACTIVE_STATES = frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING})
"""A job in these states holds its unique key whatever its ``unique_until``."""


@dataclass(frozen=True, slots=True, init=False)
class RateLimit:
    """At most ``n`` starts of a handler's jobs in any window of length ``per``.

    Counted over every worker process on the store (a sliding window).

    Args:
        n: starts allowed per window (at least 1).
        per: the window, a timedelta or seconds (``RateLimit(5, per=60)``).

    Raises:
        ValueError: ``n`` below 1, or ``per`` not positive and finite.
        TypeError: ``n`` not an int, ``per`` not a timedelta or number.
    """

    n: int
    per: timedelta

    def __init__(self, n: int, per: timedelta | float) -> None:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError("RateLimit(n, per=...): n must be an int")
        if n < 1:
            raise ValueError("RateLimit(n, per=...): n must be at least 1")
        if isinstance(per, bool) or not isinstance(per, timedelta | int | float):
            raise TypeError("RateLimit(n, per=...): per must be a timedelta or seconds")
        if not isinstance(per, timedelta):
            if not math.isfinite(per):
                raise ValueError("RateLimit(n, per=...): per must be finite")
            per = timedelta(seconds=per)
        if per <= timedelta(0):
            raise ValueError("RateLimit(n, per=...): per must be positive")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "per", per)


class LimitOptions(TypedDict, total=False):
    """The limit keywords of ``Engine.handler``, ``Engine.add_handler`` and ``backrun.handler``."""

    max_concurrency: int | None
    """At most this many of the handler's jobs RUNNING at once, over every process."""
    concurrency_key: Callable[[Any], str] | None
    """Maps a validated payload to the key ``max_concurrency`` applies per."""
    rate_limit: RateLimit | None
    """At most ``n`` starts per ``per``, over every process."""


@dataclass(frozen=True, slots=True)
class HandlerLimits:
    """What limits a handler's starts; a store's claim enforces it.

    Attributes:
        max_concurrency: at most this many RUNNING jobs of the handler (per
            ``concurrency_key`` value, when the handler has one), or ``None``.
        rate_limit: at most ``n`` starts per ``per`` (per handler), or ``None``.
    """

    max_concurrency: int | None = None
    rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        limit = self.max_concurrency
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise TypeError("max_concurrency must be an int")
        if limit is not None and limit < 1:
            raise ValueError("max_concurrency must be at least 1")
        if self.rate_limit is not None and not isinstance(self.rate_limit, RateLimit):
            raise TypeError("rate_limit must be a backrun.RateLimit")

    @property
    def active(self) -> bool:
        """True if anything is limited."""
        return self.max_concurrency is not None or self.rate_limit is not None


@dataclass(frozen=True, slots=True)
class LimitedClaim:
    """What :meth:`Storage.claim_limited` took, and what it had to leave waiting.

    Attributes:
        jobs: the claimed jobs (as :meth:`Storage.claim` returns them).
        waiting: ``(job id, handler, limit)`` of due jobs skipped because a
            limit held them (``limit`` is :data:`CONCURRENCY` or :data:`RATE`).
        retry_at: the earliest time a rate window lets a skipped job start,
            or ``None``; concurrency waits end with a store notification.
    """

    jobs: list[Job]
    waiting: list[tuple[str, str, str]] = field(default_factory=list)
    retry_at: datetime | None = None


def handler_limits(
    *,
    max_concurrency: int | None = None,
    concurrency_key: Callable[[Any], str] | None = None,
    rate_limit: RateLimit | None = None,
) -> HandlerLimits | None:
    """Check a handler's limits; ``None`` when it has none.

    Raises:
        ValueError: ``max_concurrency`` below 1, or a ``concurrency_key``
            without ``max_concurrency``.
        TypeError: a value of the wrong type.
    """
    if concurrency_key is not None and not callable(concurrency_key):
        raise TypeError("concurrency_key must be a callable taking the payload")
    if concurrency_key is not None and max_concurrency is None:
        raise ValueError("concurrency_key needs max_concurrency (the limit applied per key)")
    limits = HandlerLimits(max_concurrency=max_concurrency, rate_limit=rate_limit)
    return limits if limits.active else None


FORGET_AFTER = timedelta(seconds=10)
"""How long past its window a start is kept (at least ``per`` more).

A claimer reads its ``now`` before it waits for the handler's lock, so the
starts are not recorded in time order; one with an older ``now`` must still
see every start that counts for it. Pruning starts older than
``now - per - max(per, FORGET_AFTER)`` keeps the guarantee for any claimer
that waited less than that for the lock.
"""


def forget_before(now: datetime, rate: RateLimit) -> datetime:
    """Starts at or before this may be deleted (see :data:`FORGET_AFTER`)."""
    return now - rate.per - max(rate.per, FORGET_AFTER)


def limits_for(job: Job, limits: Mapping[str, HandlerLimits]) -> HandlerLimits | None:
    """The limits that apply to ``job`` at claim time, or ``None`` if it is free to start."""
    if not job.limited:
        return None
    found = limits.get(job.handler)
    return found if found is not None and found.active else None


def holds_key(holder: Job, now: datetime, newcomer: Job | None = None) -> bool:
    """True if ``holder`` (the key's last taker) keeps the key from ``newcomer`` at ``now``.

    It does while it waits or runs, before its own ``unique_until``, and while
    it is younger than the newcomer's ``unique_for`` (``enqueue(unique_for=)``
    dedupes against any job of the key created within that span).
    """
    if holder.state in ACTIVE_STATES:
        return True
    if holder.unique_until is not None and now < holder.unique_until:
        return True
    if newcomer is None:
        return False
    until, created = newcomer.unique_until, newcomer.created_at
    if until is None or created is None or holder.created_at is None:
        return False
    return now < holder.created_at + (until - created)


def check_unique_key(key: object) -> str:
    """Return ``key`` if it is a usable unique or concurrency key.

    Raises:
        TypeError: not a str.
        ValueError: empty, longer than 1000 characters, or holding a NUL.
    """
    if not isinstance(key, str):
        raise TypeError(f"keys must be str, not {type(key).__name__}")
    if not key or len(key) > MAX_KEY_LENGTH or "\x00" in key:
        raise ValueError("keys are 1-1000 characters without NUL")
    return key


def group_hash(kind: str, handler: str, key: str | None) -> str:
    """A file-name-safe digest naming one (kind, handler, key): never the raw key."""
    text = f"{kind}\x00{handler}\x00{'' if key is None else key}"
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def group_int(kind: str, handler: str, key: str | None) -> int:
    """A signed 64-bit number naming one (kind, handler, key), for advisory locks."""
    digest = hashlib.sha256(f"{kind}\x00{handler}\x00{key or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# -- what this process saw wait --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wait:
    """A job this process found held by a limit: which limit, and since when."""

    limit: str
    since: datetime


class _WaitBook:
    """Jobs this process's workers found waiting (bounded: the oldest are forgotten)."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._waits: OrderedDict[str, Wait] = OrderedDict()

    def note(self, job_id: str, limit: str, now: datetime) -> bool:
        """Record that ``job_id`` waited for ``limit``; True the first time for this job."""
        with self._lock:
            if job_id in self._waits:
                return False
            self._waits[job_id] = Wait(limit, now)
            while len(self._waits) > self._size:
                self._waits.popitem(last=False)
            return True

    def take(self, job_id: str) -> Wait | None:
        """Remove and return the job's recorded wait, if any."""
        with self._lock:
            return self._waits.pop(job_id, None)


_book = _WaitBook()


def note_wait(job_id: str, limit: str, now: datetime) -> bool:
    """Remember that a job waited for ``limit``; True the first time for this job."""
    return _book.note(job_id, limit, now)


def took_wait(job_id: str) -> Wait | None:
    """Forget and return what :func:`note_wait` kept for a job now starting."""
    return _book.take(job_id)
