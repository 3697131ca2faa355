"""SIGTERM and SIGINT for a blocking worker: drain on the first, force on a second Ctrl+C."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["Interrupts", "stop_on_signals"]


class Interrupts:
    """How many SIGINTs arrived; ``forced`` once a second one asked to skip the drain."""

    def __init__(self) -> None:
        self.count = 0

    @property
    def forced(self) -> bool:
        """True once a second SIGINT arrived."""
        return self.count >= 2


@contextmanager
def stop_on_signals(worker: Worker) -> Iterator[Interrupts]:
    """Within the block, SIGTERM or a first SIGINT stops ``worker`` gracefully.

    A second SIGINT forces it (running jobs are released at once). Handlers are
    installed only in the main thread (Python delivers signals there) and the
    previous ones are restored on exit. The handlers only set flags: taking a
    lock inside a signal handler could deadlock the thread it interrupted.
    """
    interrupts = Interrupts()

    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGINT:
            interrupts.count += 1
        if interrupts.forced:
            worker.force()
        else:
            worker.request_stop()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        yield interrupts
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
