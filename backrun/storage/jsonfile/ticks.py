"""Adding a job at most once per id (schedule ticks) in the JSON file store.

A job file moves between directories as its state changes (ready, running,
finished) and its ready name carries more than its id, so the link that
publishes a new job cannot by itself refuse an id that exists elsewhere.
Creators of one id therefore take ``ticks/<id>.lock`` (an ``flock``, which the
kernel drops when its holder dies, however it dies) and, holding it, look for
the marker ``ticks/<id>``, then for the job, and only then add the job and
write the marker. A creator killed at any step leaves no marker, or a job and
no marker: the next creator, under the same lock, finds the job and does not
add it again. Markers are deleted after the store's retention, with the jobs.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

from backrun.storage import fs

from .locks import is_free

__all__ = ["forget_markers", "has_marker", "mark", "tick_lock"]

DIRECTORY = "ticks"
_LOCK_SUFFIX = ".lock"
# Threads of one process take turns first: the unlink-on-release dance below
# assumes one holder per process at a time, and ticks are rare enough to queue.
_in_process = threading.Lock()


def _directory(root: str) -> str:
    directory = os.path.join(root, DIRECTORY)
    with contextlib.suppress(FileExistsError):
        fs.mkdir(directory)
    return directory


@contextlib.contextmanager
def tick_lock(root: str, job_id: str, *, wait: float = 10.0) -> Iterator[None]:
    """Hold the creation lock of ``job_id`` (an already checked id) across processes.

    Raises:
        TimeoutError: another live process held it for ``wait`` seconds.
    """
    path = os.path.join(_directory(root), job_id + _LOCK_SUFFIX)
    deadline = time.monotonic() + wait
    with _in_process:
        while True:
            fd = fs.open_lock_file(path)
            try:
                locked = fs.lock_exclusive(fd, path)
                if locked and os.fstat(fd).st_ino == _inode(path):
                    break
            except BaseException:
                fs.close(fd, path)
                raise
            fs.close(fd, path)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"lock {path} is held by a live process")
            time.sleep(0.002)
        try:
            yield
        finally:
            # Unlinked while held: a waiter that opened the old file sees the
            # inode change and opens the path again.
            with contextlib.suppress(FileNotFoundError):
                fs.unlink(path)
            fs.close(fd, path)


def _inode(path: str) -> int:
    try:
        return fs.lstat(path).st_ino
    except FileNotFoundError:
        return -1


def has_marker(root: str, job_id: str) -> bool:
    """True if a creator of ``job_id`` finished adding it."""
    try:
        fs.lstat(os.path.join(root, DIRECTORY, job_id))
    except FileNotFoundError:
        return False
    return True


def mark(root: str, job_id: str, *, sync: bool) -> None:
    """Record that ``job_id`` was added (call while holding its lock)."""
    directory = _directory(root)
    path = os.path.join(directory, job_id)
    try:
        fd = fs.open_new(path)
    except FileExistsError:
        return
    fs.close(fd, path)
    if sync:
        fs.fsync_dir(directory)


def forget_markers(root: str, *, before_ns: int) -> int:
    """Delete markers (and free leftover locks) older than ``before_ns``."""
    directory = os.path.join(root, DIRECTORY)
    try:
        names = fs.listdir(directory)
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        path = os.path.join(directory, name)
        try:
            if fs.lstat(path).st_mtime_ns >= before_ns:
                continue
            if name.endswith(_LOCK_SUFFIX):
                if is_free(path, remove=True):
                    removed += 1
                continue
            fs.unlink(path)
            removed += 1
        except FileNotFoundError:
            continue
    return removed
