"""Bookkeeping shared by the middlewares: attempts between ``process`` and ``attempt_finished``.

An attempt is seen twice: ``process`` wraps the handler call in the slot
thread, then the worker records the outcome and calls ``attempt_finished``.
Usually in that order, in one thread; but when an attempt times out, the
supervisor records it (and calls ``attempt_finished``) while the handler is
still running, and ``process`` ends later, or never. Each middleware keeps
the attempts it saw start in an :class:`InflightTable` so whichever event
comes second can finish the job of the first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from backrun.context import JobContext
from backrun.locking import acquire

__all__ = ["Inflight", "InflightTable"]

T = TypeVar("T")

# Entries whose handler returned but whose attempt_finished never came (the
# worker lost the claim) are dropped once the table is this big, if this old.
_SWEEP_SIZE = 1024
_SWEEP_AGE = 300.0


class Inflight(Generic[T]):
    """One attempt: when it started and ended (``perf_counter``), and a payload."""

    __slots__ = ("ctx", "end", "finished", "start", "stuck", "value")

    def __init__(self, ctx: JobContext, value: T) -> None:
        self.ctx = ctx  # held so id(ctx) stays unique while the entry lives
        self.value = value
        self.start = time.perf_counter()
        self.end: float | None = None
        self.finished = False
        self.stuck = False


class InflightTable(Generic[T]):
    """Attempts by ``id(ctx)``.

    The usual attempt (handler returned, then its outcome recorded) takes no
    lock: ``attempt_finished`` pops the entry (one step, so exactly one caller
    gets it) and finds ``end`` already set. Only when it comes first (a
    timeout, a release) does it decide ``stuck`` under the lock, and
    ``handler_returned``, seeing ``finished``, waits for that section to end.
    """

    def __init__(self, on_dropped: Callable[[Inflight[T]], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, Inflight[T]] = {}
        self._on_dropped = on_dropped

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self, ctx: JobContext, value: T) -> Inflight[T]:
        """Register an attempt whose handler is about to run."""
        entry = Inflight(ctx, value)
        self._entries[id(ctx)] = entry
        return entry

    def handler_returned(self, entry: Inflight[T]) -> bool:
        """Note that the handler returned; True if ``attempt_finished`` came first."""
        end = entry.end = time.perf_counter()
        if entry.finished:
            # attempt_finished came first: once its section (if it took the
            # lock) is over, ``entry.stuck`` is decided.
            with self._lock:
                return True
        if len(self._entries) > _SWEEP_SIZE:
            self._sweep(end)
        return False

    def attempt_finished(
        self, ctx: JobContext, *, timed_out: bool = False
    ) -> tuple[Inflight[T] | None, bool]:
        """Take the attempt's entry; the flag is True if its handler is still running.

        A timed-out attempt whose handler is still running is marked ``stuck``
        (its thread is abandoned by the worker until the handler returns).
        """
        entry = self._entries.pop(id(ctx), None)  # one step: the entry goes to one caller
        if entry is None:
            return None, False
        if entry.end is not None:
            # The usual order: the handler returned (end is set before finished
            # is read there), so nothing is running and nothing is stuck.
            entry.finished = True
            return entry, False
        lock = self._lock
        if not lock.acquire(False):
            acquire(lock)
        try:
            entry.finished = True
            running = entry.end is None
            entry.stuck = running and timed_out
            return entry, running
        finally:
            lock.release()

    def drain(self, min_age: float = 0.0) -> list[Inflight[T]]:
        """Remove and return the entries whose handler returned ``min_age`` seconds ago or more.

        An entry younger than that may still hear ``attempt_finished`` (the
        worker is recording it right now), so it is left alone.
        """
        now = time.perf_counter()
        with self._lock:
            done = [  # a copy first: other threads add and take entries without the lock
                k
                for k, e in list(self._entries.items())
                if e.end is not None and now - e.end >= min_age
            ]
            taken = [self._entries.pop(k, None) for k in done]
        return [e for e in taken if e is not None]

    def _sweep(self, now: float) -> None:
        with self._lock:
            stale = [
                k
                for k, e in list(self._entries.items())
                if e.end is not None and now - e.end > _SWEEP_AGE
            ]
            taken = [self._entries.pop(k, None) for k in stale]
        dropped = [e for e in taken if e is not None]
        if self._on_dropped is not None:
            for entry in dropped:
                self._on_dropped(entry)
