"""What a worker shows its supervisor and needs of its engine, and worker ids.

Kept apart from :mod:`backrun.worker` so the worker module holds the slot
loop and its bookkeeping only.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from typing import Protocol

from .attempts import Attempt
from .context import EngineHandle
from .scheduler import ScheduleHost

__all__ = ["PoolOwner", "PoolView", "WorkerHost", "new_worker_id"]


def new_worker_id() -> str:
    """Return a worker id: ``<host>-<pid>-<8 hex>``, safe in file names."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


class WorkerHost(EngineHandle, ScheduleHost, Protocol):
    """What a worker uses of its engine: :class:`~backrun.engine.Engine` is one.

    The attempts see it as an :class:`~backrun.context.EngineHandle`, the
    scheduler as a :class:`~backrun.scheduler.ScheduleHost`; the worker
    itself needs nothing more.
    """


class PoolOwner(Protocol):
    """The worker internals a :class:`PoolView` reads."""

    @property
    def stopping(self) -> bool:
        """True once the worker stops claiming."""
        ...

    @property
    def forced(self) -> bool:
        """True once the stop was forced."""
        ...

    @property
    def running_count(self) -> int:
        """How many attempts are in flight."""
        ...

    def _running_attempts(self) -> list[Attempt]: ...

    def _abandon(self, attempt: Attempt) -> None: ...

    def _publish_info(self) -> None: ...


class PoolView:
    """The worker as its supervisor sees it (a :class:`~backrun.supervisor.SupervisedPool`).

    A separate object, so the plumbing the supervisor needs (abandoning a
    thread, the attempts in flight) stays off the exported :class:`Worker`.
    """

    __slots__ = ("_worker",)

    def __init__(self, worker: PoolOwner) -> None:
        self._worker = worker

    @property
    def stopping(self) -> bool:
        """True once the worker stops claiming."""
        return self._worker.stopping

    @property
    def forced(self) -> bool:
        """True once the stop was forced."""
        return self._worker.forced

    @property
    def running_count(self) -> int:
        """How many attempts are in flight."""
        return self._worker.running_count

    def running_attempts(self) -> list[Attempt]:
        """A snapshot of the attempts in flight."""
        return self._worker._running_attempts()

    def abandon(self, attempt: Attempt) -> None:
        """Give up on a stuck attempt's thread and start a fresh slot."""
        self._worker._abandon(attempt)

    def publish_info(self) -> None:
        """Publish this worker's record to the store."""
        self._worker._publish_info()
