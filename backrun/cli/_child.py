"""The child side of ``--processes``: talk to the parent, stop at the job or memory cap.

A child is an ordinary ``backrun worker`` started by the parent with a socket
on the descriptor named by ``$BACKRUN_SUPERVISOR_FD``. Over it the child says
``ready`` once its worker has started and ``recycle <why>`` when it reaches
``--max-jobs-per-child`` or ``--max-memory-per-child``; the parent says
``drain`` (graceful stop) or ``force`` (release running jobs now). When the
parent dies the socket closes, and the child drains and exits rather than
running on unsupervised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
import sys
import threading

from backrun.context import JobContext
from backrun.jobs import Job, JobState
from backrun.middleware import Middleware, WorkerHandle

__all__ = ["FD_ENV", "INDEX_ENV", "ChildLink", "child_link_from_env", "rss_bytes"]

FD_ENV = "BACKRUN_SUPERVISOR_FD"
INDEX_ENV = "BACKRUN_CHILD_INDEX"

log = logging.getLogger("backrun.cli")

_MEMORY_CHECK_SECONDS = 1.0


def rss_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``), else its peak (``ru_maxrss``)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class ChildLink(Middleware):
    """The child's end of the parent's socket, installed as middleware of the child's engine.

    Args:
        sock: the connected socket to the parent.
        max_jobs: stop claiming once this many attempts were recorded (None: no cap).
        max_memory_mb: stop claiming once resident memory exceeds this (None: no cap).
    """

    def __init__(
        self, sock: socket.socket, *, max_jobs: int | None, max_memory_mb: int | None
    ) -> None:
        self.sock = sock
        self.max_jobs = max_jobs
        self.max_memory = None if max_memory_mb is None else max_memory_mb * 1024 * 1024
        self.worker: WorkerHandle | None = None
        self.done = 0
        self._lock = threading.Lock()
        self._recycling = False
        self._reader: threading.Thread | None = None

    def worker_started(self, worker: WorkerHandle) -> None:
        """Tell the parent this child is up, then listen for its commands."""
        self.worker = worker
        self._send(f"ready {worker.id}")
        self._reader = threading.Thread(target=self._listen, name="backrun-child-link", daemon=True)
        self._reader.start()

    def attempt_finished(self, ctx: JobContext, job: Job, error: BaseException | None) -> None:
        """Count recorded attempts (not releases); stop claiming at the cap."""
        if job.state is JobState.QUEUED:
            return
        with self._lock:
            self.done += 1
            done = self.done
        if self.max_jobs is not None and done >= self.max_jobs:
            self._recycle(f"max-jobs {done} attempt(s) run (--max-jobs-per-child {self.max_jobs})")
        else:
            self._check_memory()

    def _check_memory(self) -> None:
        if self.max_memory is None:
            return
        rss = rss_bytes()
        if rss > self.max_memory:
            self._recycle(
                f"max-memory {rss / 1048576:.0f} MB resident "
                f"(--max-memory-per-child {self.max_memory // 1048576})"
            )

    def _recycle(self, why: str) -> None:
        with self._lock:
            if self._recycling:
                return
            self._recycling = True
        if self.worker is not None:
            self.worker.request_stop()
        self._send(f"recycle {why}")

    def _listen(self) -> None:
        buffer = b""
        self.sock.settimeout(_MEMORY_CHECK_SECONDS)
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                self._check_memory()
                continue
            except OSError:
                data = b""
            if not data:
                # The parent is gone: finish what runs, then exit.
                log.warning("the supervising process is gone: stopping this worker")
                if self.worker is not None:
                    self.worker.request_stop()
                return
            buffer += data
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                self._command(line.decode("ascii", "replace").strip())

    def _command(self, command: str) -> None:
        worker = self.worker
        if worker is None:
            return
        if command == "drain":
            worker.request_stop()
        elif command == "force":
            worker.force()

    def _send(self, line: str) -> None:
        # If the parent is gone, _listen notices and stops the worker.
        with contextlib.suppress(OSError):
            self.sock.sendall(line.encode("ascii", "replace") + b"\n")

    def close(self) -> None:
        """Close the socket (the parent sees EOF and collects the exit code)."""
        with contextlib.suppress(OSError):
            self.sock.close()


def child_link_from_env(*, max_jobs: int | None, max_memory_mb: int | None) -> ChildLink | None:
    """The link to a supervising parent if this process is a ``--processes`` child, else None.

    Takes ``$BACKRUN_SUPERVISOR_FD`` out of the environment so that processes
    a handler starts do not believe they are children too.
    """
    text = os.environ.pop(FD_ENV, None)
    os.environ.pop(INDEX_ENV, None)
    if not text:
        return None
    try:
        fd = int(text)
        sock = socket.socket(fileno=fd)
    except (ValueError, OSError):
        log.warning("ignoring %s=%r: not an open socket", FD_ENV, text)
        return None
    return ChildLink(sock, max_jobs=max_jobs, max_memory_mb=max_memory_mb)
