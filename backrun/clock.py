"""Time as backrun sees it: a Clock protocol so tests can drive time by hand."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "utcnow"]


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


@runtime_checkable
class Clock(Protocol):
    """Source of wall-clock time for scheduling, leases and deadlines.

    ``subscribe`` lets a clock that jumps (a test's fake clock) wake the
    worker's waits; the system clock never needs to.
    """

    def now(self) -> datetime:
        """Return the current time, aware and in UTC."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever time jumps; return a function that unsubscribes."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        """Return the current time, aware and in UTC."""
        return datetime.now(UTC)

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Real time never jumps, so nothing is ever called."""
        return _noop


def _noop() -> None:
    return None
