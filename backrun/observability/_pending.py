"""Metric updates of the job hot path, queued without a lock and applied later, in order.

prometheus_client takes a lock per value on every ``inc``/``observe``: about
eight per job, which slot threads convoy on. Instead, a job's updates are
appended to one deque (an atomic append, no Python lock) and applied to the
metrics by whichever comes first:

* a collection of the registry: :class:`PendingUpdates` is registered before
  the metrics it feeds, so ``/metrics`` and ``registry.get_sample_value`` see
  every update made before they were called;
* the queue reaching ``max_pending`` updates (the appending thread applies them,
  unless another thread is applying already);
* the flusher thread, every ``FLUSH_INTERVAL`` seconds, so values written to
  multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, read by another process)
  are at most that late; and at interpreter exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

__all__ = ["FLUSH_INTERVAL", "PendingUpdates"]

log = logging.getLogger("backrun.observability")

FLUSH_INTERVAL = 0.5
"""Seconds an update may wait in the queue when nothing collects the registry."""

_live: weakref.WeakSet[PendingUpdates] = weakref.WeakSet()
_flusher_lock = threading.Lock()
_flusher: threading.Thread | None = None


class PendingUpdates:
    """The queued updates of one registry's metrics (a collector that exports nothing).

    Args:
        registry: where the metrics live; this is registered there (call it
            before the metrics are created, so it is collected first).
        max_pending: queued updates that make the appending thread apply them.
    """

    def __init__(self, registry: CollectorRegistry, max_pending: int = 2048) -> None:
        self._queue: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._applying = threading.Lock()
        self._max = max_pending
        registry.register(self)
        _live.add(self)
        _start_flusher()

    def add(self, update: Callable[..., None], *args: Any) -> None:
        """Queue ``update(*args)``; thread-safe, takes no lock unless the queue is full."""
        queue = self._queue
        queue.append((update, args))
        if len(queue) >= self._max and self._applying.acquire(blocking=False):
            try:
                self._apply()
            finally:
                self._applying.release()

    def flush(self) -> None:
        """Apply every queued update, waiting for a flush already under way."""
        with self._applying:
            self._apply()

    def _apply(self) -> None:
        popleft = self._queue.popleft
        while True:
            try:
                update, args = popleft()
            except IndexError:
                return
            try:
                update(*args)
            except Exception:
                log.exception("a metric update failed")

    def collect(self) -> Iterable[Metric]:
        """Apply the queued updates before the registry reads the metrics; export nothing."""
        self.flush()
        return ()

    def describe(self) -> Iterable[Metric]:
        """Nothing of its own (so registering it never applies anything)."""
        return ()


def _flush_all() -> None:
    for pending in list(_live):
        try:
            pending.flush()
        except Exception:
            log.exception("flushing metric updates failed")


def _run_flusher(stop: threading.Event) -> None:
    while not stop.wait(FLUSH_INTERVAL):
        _flush_all()


def _start_flusher() -> None:
    global _flusher
    with _flusher_lock:
        if _flusher is not None and _flusher.is_alive():
            return
        _flusher = threading.Thread(
            target=_run_flusher,
            args=(threading.Event(),),
            name="backrun-metrics-flush",
            daemon=True,
        )
        _flusher.start()


def _after_fork() -> None:
    global _flusher, _flusher_lock
    _flusher = None  # the parent's thread does not exist here
    _flusher_lock = threading.Lock()  # another thread may have held it at the fork
    if len(_live):
        _start_flusher()


atexit.register(_flush_all)
os.register_at_fork(after_in_child=_after_fork)
