"""The gate that lets a ``run_alone`` job run with nothing beside it in its worker.

A worker crash is charged only to a job that was running alone in its worker
(see :func:`backrun.supervisor.rescue_orphan`); this gate is what makes
"alone" true. A ``run_alone`` job runs only while no other attempt is in flight
in this process, and no claim starts while it runs. A slot that claims one
while others are in flight gives it back at once (uncharged, in its place);
the gate then lets no claim start until nothing is in flight, and lets exactly
one slot claim by itself. So two slots can never hold run_alone jobs waiting on
each other, and a run_alone job is never held claimed while a neighbour runs.

Claims in progress count as in flight: a claim whose reply has not come back
may be taking a job.
"""

from __future__ import annotations

import threading
from collections.abc import Sized

from .jobs import Job

__all__ = ["AloneGate"]


class AloneGate:
    """Claim bookkeeping for one worker; every method is called with its lock held.

    Args:
        work: the worker's condition that idle and waiting slots sleep on
            (built on the worker's lock); notified when the gate opens.
        attempts: the worker's attempts in flight (only its size is read).
    """

    __slots__ = ("_attempts", "_solo_claiming", "_work", "alone_id", "claiming", "wanted")

    def __init__(self, work: threading.Condition, attempts: Sized) -> None:
        self._work = work
        self._attempts = attempts
        self.claiming = 0  # slots inside storage.claim
        self.alone_id: str | None = None  # the run_alone job running now
        self.wanted = False  # a run_alone job was given back: drain, then claim solo
        self._solo_claiming = False

    def in_flight(self) -> int:
        """Attempts running plus claims whose reply has not come back."""
        return len(self._attempts) + self.claiming

    def enter(self) -> bool | None:
        """Start a claim: False for a normal one, True for the solo one, None if closed."""
        if self.alone_id is not None or (self.wanted and (self._solo_claiming or self.in_flight())):
            return None
        self.claiming += 1
        if self.wanted:
            self._solo_claiming = True
            return True
        return False

    def leave(self, job: Job | None, solo: bool) -> bool:
        """End a claim that returned ``job``; False if the job must be given back unrun.

        Call before the attempt is added to the worker's attempts.
        """
        self.claiming -= 1
        keep = True
        if solo:
            self._solo_claiming = False
            self.wanted = False
        if job is not None and job.run_alone:
            if self.in_flight():
                keep = False
                self.wanted = True
            else:
                self.alone_id = job.id
        if solo or not keep:
            self._work.notify_all()
        return keep

    def forgotten(self, job_id: str) -> None:
        """An attempt left the worker's attempts (finished or abandoned)."""
        if self.alone_id == job_id:
            self.alone_id = None
            self._work.notify_all()
        elif self.wanted and not self.in_flight():
            self._work.notify_all()
