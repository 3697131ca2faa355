"""Id reservations for jobs added at most once (schedule ticks) in the JSON file store.

A job file moves between directories as its state changes (ready, running,
finished), and its ready name carries more than its id, so the link that
publishes a new job cannot by itself refuse an id that exists elsewhere. A
tick's creator therefore first creates ``ticks/<id>`` with ``O_EXCL``: one file
name per id that never moves, so exactly one creator wins. Reservations are
deleted with the finished jobs, after the store's retention.
"""

from __future__ import annotations

import contextlib
import os

from . import fs

__all__ = ["forget_reservations", "release", "reserve"]

DIRECTORY = "ticks"


def reserve(root: str, job_id: str, *, sync: bool) -> bool:
    """Create the reservation of ``job_id`` (an already checked id); False if it exists."""
    directory = os.path.join(root, DIRECTORY)
    path = os.path.join(directory, job_id)
    try:
        fd = fs.open_new(path)
    except FileNotFoundError:
        try:
            fs.mkdir(directory)
        except FileExistsError:
            pass
        else:
            if sync:
                fs.fsync_dir(root)
        fd = fs.open_new(path)
    except FileExistsError:
        return False
    fs.close(fd, path)
    if sync:
        fs.fsync_dir(directory)
    return True


def release(root: str, job_id: str) -> None:
    """Drop a reservation whose job could not be written (so a retry can win)."""
    with contextlib.suppress(FileNotFoundError):
        fs.unlink(os.path.join(root, DIRECTORY, job_id))


def forget_reservations(root: str, *, before_ns: int) -> int:
    """Delete reservations made before ``before_ns`` (their jobs are past retention)."""
    directory = os.path.join(root, DIRECTORY)
    try:
        names = fs.listdir(directory)
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        path = os.path.join(directory, name)
        try:
            if fs.lstat(path).st_mtime_ns < before_ns:
                fs.unlink(path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed
