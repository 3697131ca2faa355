"""Every file-system call of the JSON store, in one module, so tests can inject faults.

Each function here makes one system call (or one small, fixed group of them)
and first reports it to an optional hook. :class:`Faults` is such a hook: it
numbers the calls and, at a chosen call, raises an :class:`OSError` with a
chosen ``errno`` or ends the process (``os._exit``), so a test can break any
step of any operation the store performs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat as _stat
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

__all__ = [
    "Faults",
    "NotRegularFile",
    "SimulatedCrash",
    "close",
    "fsync",
    "fsync_dir",
    "fsync_path",
    "iter_names",
    "link",
    "listdir",
    "lock_exclusive",
    "lock_exclusive_wait",
    "lstat",
    "mkdir",
    "open_lock_file",
    "open_new",
    "read_file",
    "read_file_stat",
    "rename",
    "rmdir",
    "set_hook",
    "stat",
    "unlink",
    "utime",
    "write_all",
]

Hook = Callable[[str, str], None]
_KINDS = {
    _stat.S_IFIFO: "FIFO",
    _stat.S_IFDIR: "directory",
    _stat.S_IFCHR: "character device",
    _stat.S_IFBLK: "block device",
    _stat.S_IFSOCK: "socket",
}
_hook: Hook | None = None


def set_hook(hook: Hook | None) -> Hook | None:
    """Install ``hook(operation, path)``, called before every call; return the previous one."""
    global _hook
    previous, _hook = _hook, hook
    return previous


def _report(operation: str, path: str) -> None:
    hook = _hook
    if hook is not None:
        hook(operation, path)


def open_new(path: str) -> int:
    """Create ``path`` for writing (0600, never following a symlink); return the descriptor."""
    _report("open", path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def write_all(fd: int, data: bytes, path: str) -> None:
    """Write all of ``data`` to ``fd``."""
    _report("write", path)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync(fd: int, path: str) -> None:
    """Flush a file's data and metadata to the disk."""
    _report("fsync", path)
    os.fsync(fd)


def fsync_path(path: str) -> None:
    """Flush the data of the file at ``path`` to the disk (opening it read-only)."""
    _report("fsync", path)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def close(fd: int, path: str) -> None:
    """Close a descriptor (never reported to the hook: closing cannot be refused)."""
    os.close(fd)


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` durable."""
    _report("fsync_dir", path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NotRegularFile(OSError):
    """A job file turned out to be a FIFO, device, directory or socket: never read."""


def read_file(path: str) -> bytes:
    """Return the whole content of the regular file ``path``, never following a symlink.

    Opened non-blocking, so a FIFO under a job's name cannot hang the reader;
    anything that is not a regular file raises :class:`NotRegularFile`.
    """
    return read_file_stat(path)[0]


def read_file_stat(path: str) -> tuple[bytes, os.stat_result]:
    """:func:`read_file`, with the status of the file that was read (its ``fstat``)."""
    _report("read", path)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not _stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(_stat.S_IFMT(st.st_mode), "special file")
            raise NotRegularFile(errno.EINVAL, f"not a regular file but a {kind}", path)
        # One read in the usual case: exactly the size fstat gave, though one
        # byte more was asked for, is the whole file (job files never grow).
        data = os.read(fd, st.st_size + 1)
        if len(data) == st.st_size:
            return data, st
        chunks = [data]
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def rename(src: str, dst: str) -> None:
    """Atomically rename ``src`` to ``dst`` (replacing ``dst``); FileNotFoundError if gone."""
    _report("rename", src)
    os.rename(src, dst)


def link(src: str, dst: str) -> None:
    """Give ``src``'s file the new name ``dst``; FileExistsError if ``dst`` exists."""
    _report("link", dst)
    os.link(src, dst, follow_symlinks=False)


def unlink(path: str) -> None:
    """Remove a file name."""
    _report("unlink", path)
    os.unlink(path)


def mkdir(path: str) -> None:
    """Create a directory, mode 0700; FileExistsError if it exists."""
    _report("mkdir", path)
    os.mkdir(path, 0o700)


def rmdir(path: str) -> None:
    """Remove an empty directory."""
    _report("rmdir", path)
    os.rmdir(path)


def listdir(path: str) -> list[str]:
    """Return the names in directory ``path``."""
    _report("listdir", path)
    return os.listdir(path)


def iter_names(path: str) -> Iterator[str]:
    """Yield the names in directory ``path`` one at a time (no list of them all is built)."""
    _report("listdir", path)
    with os.scandir(path) as entries:
        for entry in entries:
            yield entry.name


def stat(path: str) -> os.stat_result:
    """Return ``path``'s status, following symlinks."""
    _report("stat", path)
    return os.stat(path)


def lstat(path: str) -> os.stat_result:
    """Return ``path``'s status without following a symlink."""
    _report("stat", path)
    return os.lstat(path)


def setxattr(path: str, name: str, value: bytes) -> None:
    """Set an extended attribute of the file at ``path`` (not following a symlink)."""
    _report("setxattr", path)
    os.setxattr(path, name, value, follow_symlinks=False)


def getxattr(path: str, name: str) -> bytes:
    """An extended attribute of the file at ``path``; ``OSError`` (ENODATA) if it has none."""
    _report("getxattr", path)
    return os.getxattr(path, name, follow_symlinks=False)


def utime(path: str, mtime_ns: int) -> None:
    """Set ``path``'s access and modification times; FileNotFoundError if gone."""
    _report("utime", path)
    os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def open_lock_file(path: str) -> int:
    """Open (creating, 0600) a lock file and return its descriptor."""
    _report("open", path)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def lock_exclusive(fd: int, path: str) -> bool:
    """Try to take an exclusive ``flock`` on ``fd`` without blocking; True if taken."""
    _report("flock", path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_exclusive_wait(fd: int, path: str) -> None:
    """Take an exclusive ``flock`` on ``fd``, waiting while another holder keeps it."""
    _report("flock", path)
    fcntl.flock(fd, fcntl.LOCK_EX)


class SimulatedCrash(BaseException):
    """Raised by :class:`Faults` to stop an operation dead, as a crash would.

    A ``BaseException`` so that no ``except Exception`` in the store can
    swallow it: the operation is abandoned exactly where the call was.
    """


class Faults:
    """A hook that counts file-system calls and breaks chosen ones.

    Args:
        at: the number (from 1) of the first call to break; ``None`` breaks none.
        error: the ``errno`` of the :class:`OSError` to raise there; ``None``
            raises :class:`SimulatedCrash` instead.
        exit_code: if given, end the whole process with ``os._exit`` there.
        operations: only calls of these operations count (all when ``None``).
        repeat: keep breaking every later counted call, not just the one.
    """

    def __init__(
        self,
        at: int | None = None,
        *,
        error: int | None = None,
        exit_code: int | None = None,
        operations: Collection[str] | None = None,
        repeat: bool = False,
    ) -> None:
        self.at = at
        self.error = error
        self.exit_code = exit_code
        self.operations = None if operations is None else frozenset(operations)
        self.repeat = repeat
        self.calls = 0
        self.fired = 0
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, operation: str, path: str) -> None:
        if self.operations is not None and operation not in self.operations:
            return
        with self._lock:
            self.calls += 1
            number = self.calls
            self.log.append((operation, path))
        if self.at is None or number < self.at or (number > self.at and not self.repeat):
            return
        self.fired += 1
        if self.exit_code is not None:
            os._exit(self.exit_code)
        if self.error is None:
            raise SimulatedCrash(f"simulated crash at call {number} ({operation} {path})")
        raise OSError(self.error, f"{os.strerror(self.error)} (injected)", path)

    def clear(self) -> None:
        """Stop breaking calls (the fault has cleared); counting goes on."""
        self.at = None

    @contextmanager
    def installed(self) -> Iterator[Faults]:
        """Install this hook for the duration of a ``with`` block."""
        previous = set_hook(self)
        try:
            yield self
        finally:
            set_hook(previous)
