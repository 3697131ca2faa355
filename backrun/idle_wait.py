"""``Worker.wait_idle`` (behind ``run_until_idle``): when a worker has nothing left to do.

Idle means every slot is idle, nothing is in flight or handed over, nothing
is due, the supervisor has no outcome being written (a timed-out attempt
leaves the worker's attempts before its record lands), and the store holds
no RUNNING job under this worker's id.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .jobs import JobState

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["wait_idle"]


def wait_idle(worker: Worker, timeout: float) -> int:
    """Block until ``worker`` has nothing due and nothing running; return attempts processed.

    Raises:
        TimeoutError: work remained after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    # Orphans of dead workers are work too: let the first recovery round run.
    if not worker._supervisor.first_round_done.wait(timeout):
        raise TimeoutError(f"the worker's first recovery round did not finish in {timeout} s")
    lock, changed = worker._lock, worker._changed
    while True:
        with lock:
            while worker._attempts or worker._handoff or worker._idle < _live_slots(worker):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"jobs still running or due after {timeout} s")
                changed.wait(min(remaining, 0.5))
            seq = worker._wake_seq
        next_run = worker.storage.next_run_at(queues=worker.queues)
        if next_run is None or next_run > worker.clock.now():
            if worker._supervisor.unrecorded or _holds_running_jobs(worker):
                # An outcome is not in the store yet: the job still reads RUNNING.
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"jobs still running after {timeout} s")
                with lock:
                    changed.wait(0.01)
                continue
            with lock:
                if seq == worker._wake_seq and not worker._attempts:
                    return worker.processed
            continue
        if time.monotonic() >= deadline:
            raise TimeoutError(f"jobs still due after {timeout} s")
        worker.wake_all()
        with lock:
            changed.wait(0.01)


def _holds_running_jobs(worker: Worker) -> bool:
    """True if the store still has a job RUNNING under this worker's claims."""
    running = worker.storage.find(state=JobState.RUNNING, limit=100_000)
    return any(job.worker_id == worker.id for job in running)


def _live_slots(worker: Worker) -> int:
    return sum(1 for s in worker._slots if not s.abandoned)
