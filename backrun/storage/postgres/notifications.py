"""The PostgreSQL store's LISTEN thread: wakes idle workers when jobs are added."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from .health import Outage

__all__ = ["Listener"]

log = logging.getLogger("backrun.storage.postgres")

_FIRST_DELAY = 0.1
_MAX_DELAY = 5.0
_WAIT = 0.25  # how long one wait for notifications lasts, so close() is prompt


class Listener:
    """A daemon thread that LISTENs on one channel and calls back on each notification.

    It holds its own connection (not a pooled one), reconnects with doubling
    backoff when it drops, reports to the store's :class:`Outage` (one log line
    per outage), and calls back right after every (re)connect because
    notifications sent while it was away are lost.
    """

    def __init__(
        self,
        conninfo: str,
        channel: str,
        name: str,
        connect_kwargs: dict[str, Any] | None = None,
        outage: Outage | None = None,
    ) -> None:
        self._outage = outage or Outage(channel)
        self._conninfo = conninfo
        self._connect_kwargs = {**(connect_kwargs or {}), "autocommit": True}
        self._connect_kwargs.setdefault("connect_timeout", 5)
        self._channel = channel
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def add(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Register ``callback`` (starting the thread if needed); return its remover."""
        with self._lock:
            self._callbacks.append(callback)
            if not self._started and not self._stop.is_set():
                self._started = True
                self._thread.start()

        def remove() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return remove

    def stop(self) -> None:
        """Stop the thread and wait for it (at most a few seconds). Idempotent."""
        self._stop.set()
        with self._lock:
            started = self._started
        if started and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _fire(self) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("notification callback failed")

    def _run(self) -> None:
        delay = _FIRST_DELAY
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, **self._connect_kwargs) as conn:
                    conn.execute(f'LISTEN "{self._channel}"')
                    delay = _FIRST_DELAY
                    self._fire()
                    while not self._stop.is_set():
                        if any(True for _ in conn.notifies(timeout=_WAIT, stop_after=1)):
                            self._fire()
                        self._outage.succeeded()
            except psycopg.Error as exc:
                self._outage.failed(exc)
                self._stop.wait(delay)
                delay = min(delay * 2, _MAX_DELAY)
