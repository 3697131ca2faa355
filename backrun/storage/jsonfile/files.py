"""The JSON store's file handling: the root directory's safety, temporary files, quarantine.

A file that cannot be read or parsed is moved to ``corrupt/`` beside a
``.reason`` file and logged once; whoever met it goes on without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import threading

from backrun.errors import StorageError
from backrun.jobs import Job
from backrun.serialization import load_job
from backrun.storage import fs

from .layout import random_hex
from .sync import group_sync

__all__ = ["SUBDIRS", "Files", "prepare_root"]

logger = logging.getLogger("backrun.storage.jsonfile")

SUBDIRS = ("q", "running", "cancels", "workers", "sessions", "tmp", "corrupt")


def prepare_root(root: str) -> None:
    """Create the store's directory (0700), or check that an existing one is safe to use.

    Raises:
        StorageError: the path is a symlink, not a directory, not ours, or
            writable by group or others, or the file system refused a call.
    """
    try:
        _prepare_root(root)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot prepare the job store {root}: {exc}") from exc


def _prepare_root(root: str) -> None:
    try:
        st = fs.lstat(root)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(root))
        try:
            os.makedirs(parent, exist_ok=True)
            fs.mkdir(root)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot create the job store directory {root}: {exc}") from exc
        st = fs.lstat(root)
    if stat.S_ISLNK(st.st_mode):
        raise StorageError(f"refusing the job store {root}: it is a symlink; give the real path")
    if not stat.S_ISDIR(st.st_mode):
        raise StorageError(f"refusing the job store {root}: it is not a directory")
    if st.st_uid != os.geteuid():
        raise StorageError(
            f"refusing the job store {root}: it is owned by uid {st.st_uid}, not by this user"
        )
    if st.st_mode & 0o022:
        raise StorageError(
            f"refusing the job store {root}: it is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run chmod 700 on it"
        )
    for name in SUBDIRS:
        path = os.path.join(root, name)
        try:
            fs.mkdir(path)
        except FileExistsError:
            sub = fs.lstat(path)
            if not stat.S_ISDIR(sub.st_mode):
                raise StorageError(
                    f"refusing the job store {root}: {name} is not a directory"
                ) from None
        except OSError as exc:
            raise StorageError(f"cannot prepare the job store {root}: {exc}") from exc


class Files:
    """Temporary writes, record reads and quarantine under one store root."""

    def __init__(self, root: str, *, fsync: bool) -> None:
        self.root = root
        self.fsync = fsync
        self.tmp = os.path.join(root, "tmp")
        self.corrupt = os.path.join(root, "corrupt")
        self._reported: set[str] = set()
        self._lock = threading.Lock()

    def write_tmp(self, data: bytes, *, sync: bool, mtime_ns: int | None = None) -> str:
        """Write ``data`` to a new file in ``tmp/``; return its path.

        The data is flushed to the disk if ``sync`` (and the store syncs), and
        the file's mtime set to ``mtime_ns`` if given, so it is right the
        moment the file is renamed into view. On any failure the file is
        removed again and the error raised.
        """
        path = os.path.join(self.tmp, random_hex(24) + ".tmp")
        self.write_new(path, data, sync=sync, mtime_ns=mtime_ns)
        return path

    def write_tmp_stat(self, data: bytes) -> tuple[str, os.stat_result]:
        """:meth:`write_tmp` (synced), with the new file's status (its identity)."""
        path = os.path.join(self.tmp, random_hex(24) + ".tmp")
        st = self.write_new(path, data, sync=True, want_stat=True)
        assert st is not None
        return path, st

    def write_new(
        self,
        path: str,
        data: bytes,
        *,
        sync: bool,
        mtime_ns: int | None = None,
        want_stat: bool = False,
    ) -> os.stat_result | None:
        """Write ``data`` to the new file ``path``, as :meth:`write_tmp` does.

        With ``want_stat``, return the file's status once written.
        """
        fd = fs.open_new(path)
        st = None
        try:
            fs.write_all(fd, data, path)
            if sync and self.fsync:
                fs.fsync(fd, path)
            if mtime_ns is not None:
                fs.utime(path, mtime_ns)
            if want_stat:
                st = os.fstat(fd)
        except Exception:
            fs.close(fd, path)
            self.discard(path)
            raise
        fs.close(fd, path)
        return st

    def discard(self, path: str) -> None:
        """Remove a file if it is there, ignoring errors (cleanup after a failure)."""
        with contextlib.suppress(OSError):
            fs.unlink(path)

    def sync_dir(self, path: str) -> None:
        """Make a directory's entries durable (when this store syncs).

        Concurrent callers share syncs (group commit, see
        :mod:`backrun.storage.jsonfile.sync`): each returns once a sync that
        started after its call has ended.
        """
        if self.fsync:
            group_sync.sync(path)

    def read(self, path: str) -> Job | None:
        """Read a job file; ``None`` if it is gone or was quarantined as unreadable."""
        return self.read_stat(path)[0]

    def read_stat(self, path: str) -> tuple[Job | None, int]:
        """:meth:`read`, with the inode number of the file read (0 when none was)."""
        try:
            data, st = fs.read_file_stat(path)
        except FileNotFoundError:
            return None, 0
        except OSError as exc:
            self.quarantine(path, f"unreadable: {exc.strerror or exc}")
            return None, 0
        try:
            return load_job(data), st.st_ino
        except ValueError as exc:
            self.quarantine(path, str(exc) if data else "empty file")
            return None, 0

    def quarantine(self, path: str, reason: str) -> None:
        """Move a bad file to ``corrupt/`` with a ``.reason`` file beside it; log once."""
        relative = os.path.relpath(path, self.root).replace(os.sep, "!")
        target = os.path.join(self.corrupt, f"{relative}~{secrets.token_hex(4)}")
        try:
            fs.rename(path, target)
        except FileNotFoundError:
            return
        except OSError as exc:
            with self._lock:
                first = path not in self._reported
                self._reported.add(path)
            if first:
                logger.error("cannot quarantine corrupt job file %s (%s): %s", path, reason, exc)
            return
        logger.error("quarantined corrupt job file %s as %s: %s", path, target, reason)
        try:
            tmp = self.write_tmp(reason.encode("utf-8", "replace") + b"\n", sync=False)
            fs.rename(tmp, target + ".reason")
        except OSError:
            pass

    def clean_tmp(self, *, older_than_ns: int) -> int:
        """Remove leftover temporary files whose inode changed before ``older_than_ns``."""
        removed = 0
        for name in fs.listdir(self.tmp):
            path = os.path.join(self.tmp, name)
            try:
                st = fs.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    continue  # a batch: its session's healer decides
                if st.st_ctime_ns < older_than_ns:
                    fs.unlink(path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
