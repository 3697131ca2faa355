"""Liveness by advisory lock: each live worker (and each open store) holds a ``flock``.

The kernel drops a process's locks the moment it dies, however it dies, so
"can I take this lock?" is an exact test of "is its holder gone?". ``flock``
locks belong to an open file description, so a lock this very process holds
through another descriptor still refuses us: a store never judges its own
process's workers dead.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from backrun.storage import fs

__all__ = ["LockHolder", "is_free"]


class LockHolder:
    """The locks this process holds, by path; each kept until released."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._mutex = threading.Lock()
        self._acquiring = threading.Lock()

    def acquire(self, path: str, *, wait: float = 1.0) -> None:
        """Take the lock at ``path`` and keep it; ``TimeoutError`` if another holder keeps it.

        A cleaner may unlink a free lock file between our open and our lock,
        leaving us locking a nameless file: we check that the locked file is
        still the one at ``path`` and start again if not.
        """
        with self._acquiring:  # one at a time: two threads must not race for one lock
            self._acquire(path, wait)

    def _acquire(self, path: str, wait: float) -> None:
        with self._mutex:
            if path in self._fds:
                return
        deadline = time.monotonic() + wait
        while True:
            fd = fs.open_lock_file(path)
            try:
                locked = fs.lock_exclusive(fd, path)
                if locked and os.fstat(fd).st_ino == _inode(path):
                    with self._mutex:
                        self._fds[path] = fd
                    return
            except BaseException:
                fs.close(fd, path)
                raise
            fs.close(fd, path)
            if not locked and time.monotonic() >= deadline:
                raise TimeoutError(f"lock {path} is held by a live process")
            if not locked:
                time.sleep(0.01)

    def release(self, path: str, *, unlink: bool) -> None:
        """Drop the lock at ``path`` (removing the file first if ``unlink``)."""
        with self._mutex:
            fd = self._fds.pop(path, None)
        if fd is None:
            return
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                fs.unlink(path)
        fs.close(fd, path)

    def holds(self, path: str) -> bool:
        """True if this holder has the lock at ``path``."""
        with self._mutex:
            return path in self._fds

    def release_all(self) -> None:
        """Drop every lock held, keeping the files (a crash leaves them too)."""
        with self._mutex:
            fds, self._fds = self._fds, {}
        for path, fd in fds.items():
            fs.close(fd, path)


def _inode(path: str) -> int:
    try:
        return fs.lstat(path).st_ino
    except FileNotFoundError:
        return -1


def is_free(path: str, *, remove: bool = False) -> bool:
    """True if nobody holds the lock at ``path`` (or there is no such file).

    With ``remove``, a free lock file is unlinked while we hold its lock, so
    a process taking it anew notices (see :meth:`LockHolder.acquire`).
    """
    try:
        fd = _open_existing(path)
    except FileNotFoundError:
        return True
    try:
        if not fs.lock_exclusive(fd, path):
            return False
        if remove:
            with contextlib.suppress(FileNotFoundError):
                fs.unlink(path)
        return True
    finally:
        fs.close(fd, path)


def _open_existing(path: str) -> int:
    fs.lstat(path)
    return fs.open_lock_file(path)
