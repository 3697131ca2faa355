"""Cross-process wake-ups for the JSON store: a thread watching the ready and cancels dirs.

Another process's enqueue changes a ready directory's mtime; its cancel of a
running job adds a marker to ``cancels/``; a limited job leaving RUNNING
touches ``limits/``. One daemon thread per store,
started by the first :meth:`subscribe`, stats those directories every
``interval`` seconds (a few system calls, never a listing) and calls the
subscribers when one changed, so idle workers pick up new jobs, and busy ones
learn of cancels (through ``cancel_requests``), in milliseconds instead of
waiting out their poll interval or heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Protocol

from backrun.storage import fs

__all__ = ["Watcher"]

logger = logging.getLogger("backrun.storage.jsonfile")


class _Store(Protocol):
    queues_dir: str
    cancels_dir: str

    @property
    def limits_dir(self) -> str:
        """The directory of the handler-limit slots."""
        ...

    def queue_dirs(self) -> list[str]:
        """The encoded names of the store's queues."""
        ...


class Watcher:
    """Calls subscribers when a ready directory or ``cancels/`` of the store changes."""

    def __init__(self, store: _Store, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[str, int] = {}

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Add a subscriber, starting the thread if needed; return its unsubscribe."""
        with self._lock:
            self._callbacks.append(callback)
            if self._thread is None and not self._stop.is_set():
                # Taken now, so any change after subscribe() returns is noticed.
                self._last = self._snapshot()
                self._thread = threading.Thread(
                    target=self._run, name="backrun-jsonfile-watch", daemon=True
                )
                self._thread.start()

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    @property
    def active(self) -> bool:
        """True while the thread runs for at least one subscriber."""
        thread = self._thread
        return bool(self._callbacks) and thread is not None and thread.is_alive()

    def stop(self) -> None:
        """Stop the thread (for good) and wait for it."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _snapshot(self) -> dict[str, int]:
        seen: dict[str, int] = {}
        store = self._store
        try:
            seen[store.cancels_dir] = fs.stat(store.cancels_dir).st_mtime_ns
            seen[store.queues_dir] = fs.stat(store.queues_dir).st_mtime_ns
            for qenc in store.queue_dirs():
                path = os.path.join(store.queues_dir, qenc, "ready")
                seen[path] = fs.stat(path).st_mtime_ns
        except OSError:
            pass
        with contextlib.suppress(OSError):  # a limit's slot freed (made on first use)
            seen[store.limits_dir] = fs.stat(store.limits_dir).st_mtime_ns
        return seen

    def _run(self) -> None:
        last = self._last
        while not self._stop.wait(self._interval):
            current = self._snapshot()
            if current == last:
                continue
            last = current
            with self._lock:
                callbacks = list(self._callbacks)
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    logger.exception("a job store subscriber failed")
