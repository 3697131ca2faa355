"""One name per job id in ``ids/``: what makes an add refuse an id that exists in any state.

A job file moves between directories as its state changes and its ready name
carries more than its id, so the link that publishes a new job cannot by itself
refuse an id that exists elsewhere (claimed by another process, finished).
Every add therefore first creates ``ids/<id>``: a small file naming the adding
session and a random token, written in ``tmp/`` and linked into place. A link
is one atomic step that fails if the name exists (and the file is whole before
it has the name), so of any number of threads and processes adding one id
exactly one wins, whatever state an earlier job of that id is in. The
reservation lives as long as the job: :meth:`purge` deletes it after the
job's file.

A reservation whose job cannot be found is left over when its adder failed or
was killed before publishing (or a purge died between its two unlinks). It is
judged under the id's creation lock (``ticks/<id>.lock``, so two judges never
both remove one) and removed when its session is gone (after that session's
half-done batches were healed, which may bring the job into view), when it is
this process's own and no add of it is in flight here, or when it is older
than the store's ``tmp_grace``. Otherwise the add is refused: the id is being
added right now by a live store.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable

from . import fs
from ._jsonfile_files import Files
from ._jsonfile_locks import is_free
from ._jsonfile_sync import group_sync
from ._jsonfile_ticks import tick_lock

__all__ = ["DIRECTORY", "JobExists", "Reservations"]

DIRECTORY = "ids"


class JobExists(ValueError):
    """A job with this id exists (or is being added by a live store)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} exists already")
        self.job_id = job_id


class Reservations:
    """The ``ids/`` directory of one store view.

    Args:
        root: the store's root directory.
        files: the store's temporary-file writer.
        session: this store view's session id (its lock is held while adding).
        grace_ns: age after which a reservation without a job is stale.
        exists: finds the job of an id anywhere in the store (``locate``).
        heal_dead: finishes the half-done changes of dead sessions.
    """

    def __init__(
        self,
        root: str,
        files: Files,
        session: str,
        *,
        grace_ns: int,
        exists: Callable[[str], bool],
        heal_dead: Callable[[], None],
    ) -> None:
        self.root = root
        self.files = files
        self.directory = os.path.join(root, DIRECTORY)
        self.session = session
        self.grace_ns = grace_ns
        self._exists = exists
        self._heal_dead = heal_dead
        self._mutex = threading.Lock()
        self._adding: dict[str, int] = {}  # id -> adds of it in flight in this process

    def path(self, job_id: str) -> str:
        return os.path.join(self.directory, job_id)

    def reserve(self, job_ids: list[str]) -> None:
        """Reserve every id, or none of them.

        Raises:
            JobExists: an id is taken; the ids reserved by this call are released.
            OSError: the file system refused; the ids reserved by this call are released.
        """
        with self._mutex:
            for job_id in job_ids:
                self._adding[job_id] = self._adding.get(job_id, 0) + 1
        made: list[str] = []
        try:
            # One file, linked under every id: a reservation costs one link.
            tmp = self.files.write_tmp(
                f"{self.session}~{secrets.token_hex(8)}".encode(), sync=False
            )
            try:
                for job_id in job_ids:
                    self._reserve_one(tmp, job_id)
                    made.append(job_id)
            finally:
                self.files.discard(tmp)
        except Exception:
            self.release(job_ids, unreserve=False)
            for job_id in made:
                self.forget(job_id)
            raise

    def _reserve_one(self, tmp: str, job_id: str) -> None:
        for _ in range(3):
            try:
                fs.link(tmp, self.path(job_id))
                return
            except FileExistsError:
                pass
            if not self._clear_if_stale(job_id):
                raise JobExists(job_id)
        raise JobExists(job_id)

    def release(self, job_ids: list[str], *, unreserve: bool) -> None:
        """End the adds of ``job_ids`` in flight here; ``unreserve`` deletes their names too."""
        with self._mutex:
            for job_id in job_ids:
                left = self._adding.get(job_id, 0) - 1
                if left > 0:
                    self._adding[job_id] = left
                else:
                    self._adding.pop(job_id, None)
        if unreserve:
            for job_id in job_ids:
                self.forget(job_id)

    def forget(self, job_id: str) -> None:
        """Delete the reservation of ``job_id`` (its job is gone); errors are left to maintain."""
        with contextlib.suppress(OSError):
            fs.unlink(self.path(job_id))

    def sync(self) -> None:
        """Make the reservations made so far durable (a sync shared with concurrent adds)."""
        group_sync.sync(self.directory)

    def _clear_if_stale(self, job_id: str) -> bool:
        """Remove the reservation of ``job_id`` if no live add or job stands behind it."""
        path = self.path(job_id)
        with tick_lock(self.root, job_id):
            try:
                target = fs.read_file(path)
                age = time.time_ns() - fs.lstat(path).st_mtime_ns
            except FileNotFoundError:
                return True
            if self._exists(job_id):
                return False
            session = target.decode("ascii", "replace").split("~", 1)[0]
            if session == self.session:
                with self._mutex:
                    stale = self._adding.get(job_id, 0) <= 1  # only the caller's own add
            elif _session_gone(self.root, session):
                self._heal_dead()  # a committed batch of the dead session shows its jobs
                stale = not self._exists(job_id)
            else:
                stale = age > self.grace_ns
            if not stale:
                return False
            try:
                if fs.read_file(path) == target:
                    fs.unlink(path)
            except FileNotFoundError:
                pass
            return True


def _session_gone(root: str, session: str) -> bool:
    if not session or "/" in session or session.startswith("."):
        return True
    return is_free(os.path.join(root, "sessions", session + ".lock"))
