"""The completion flusher: finished records made durable within a bounded window.

An owner's completion (SUCCEEDED, DEAD or CANCELLED) is published without
an fsync on the worker's thread. With ``fsync=True`` the store then hands the
published file to a :class:`CompletionFlusher`, whose thread, at most
:data:`WINDOW_S` after the first completion it has not yet flushed, fsyncs
every file handed to it and then each directory they were published into
(and ``running/``, which the change emptied) through the process's
:class:`~backrun.storage.jsonfile.sync.GroupSync`. So a completion is durable
within ``WINDOW_S`` plus the time of that flush after ``update()`` returned;
a power failure inside that window may lose it, and the job then runs again
(at-least-once), as before. A file moved on before its flush (purged,
requeued) is skipped: its mover makes its new place durable itself.

A failed flush is logged, never raised: the completion is already visible
and correct, only its survival of a power failure is in doubt.
"""

from __future__ import annotations

import logging
import threading
import time

from backrun.storage import fs

from .sync import group_sync

__all__ = ["WINDOW_S", "CompletionFlusher"]

WINDOW_S = 0.005
"""The longest a completion waits for its flush to begin (seconds)."""

logger = logging.getLogger("backrun.storage.jsonfile")


class CompletionFlusher:
    """Collects published completions and flushes them every :data:`WINDOW_S`."""

    def __init__(self, *, window: float = WINDOW_S) -> None:
        self.window = window
        self._cond = threading.Condition()
        self._files: list[str] = []
        self._dirs: set[str] = set()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.flushes = 0  # flushes made (for tests and benchmarks)
        self._noted = 0
        self._flushed = 0

    def note(self, path: str, *directories: str) -> None:
        """Flush ``path`` (then ``directories``) within the window."""
        with self._cond:
            self._files.append(path)
            self._dirs.update(directories)
            self._noted += 1
            if self._closed:
                pass  # close() flushes what is left
            elif self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="backrun-json-flusher", daemon=True
                )
                self._thread.start()
            else:
                self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every completion noted so far is flushed; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._noted
            while self._flushed < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Stop the thread after flushing everything noted. Idempotent."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.flush()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._files and not self._closed:
                        self._cond.wait()
                    # Gather the completions of one window (close() cuts it short).
                    deadline = time.monotonic() + self.window
                    while not self._closed and (left := deadline - time.monotonic()) > 0:
                        self._cond.wait(left)
                    if self._closed:
                        return
                self.flush()
        except BaseException as exc:  # never seen by a caller: the next note starts a thread
            logger.error("the completion flusher stopped: %r", exc)
            with self._cond:
                self._thread = None

    def flush(self) -> None:
        """Flush what was noted until now (the thread calls this; so does close)."""
        with self._cond:
            files, self._files = self._files, []
            directories, self._dirs = self._dirs, set()
            count = len(files)
        try:
            self._flush(files, directories)
        finally:
            with self._cond:
                if count:
                    self.flushes += 1
                self._flushed += count
                self._cond.notify_all()

    @staticmethod
    def _flush(files: list[str], directories: set[str]) -> None:
        if files:
            for path in files:
                try:
                    fs.fsync_path(path)
                except FileNotFoundError:
                    pass  # moved on since: its mover made its new place durable
                except OSError as exc:
                    logger.warning("a completion may not survive a power failure: %s", exc)
            for directory in sorted(directories):
                try:
                    group_sync.sync(directory)
                except OSError as exc:
                    logger.warning("a completion may not survive a power failure: %s", exc)
