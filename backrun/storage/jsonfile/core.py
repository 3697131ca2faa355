"""The JSON store's paths, caches and the moves every operation is built from.

Every change is one atomic rename, or a "grab" sequence when a record's
content must change with an ownership check:

1. write the new record to ``tmp/`` (flushed when durable);
2. grab: rename the current file to ``<name>~<session>.grab`` in its own
   directory. Exactly one caller wins; the others find the file gone, which
   is how a stale owner learns it lost the job (and changes nothing);
3. publish: rename the new record to its place;
4. drop the grab.

A crash can leave a grab behind. Its session's lock is then free, and
:meth:`StoreContext.heal_session` finishes the change: if the job has a copy
anywhere else, step 3 happened and the grab (the older state) is deleted;
otherwise the grab is renamed back, undoing step 2. Nothing else ever makes a
second copy of a job, so "every job in exactly one place" holds after healing.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ParamSpec, TypeVar

from backrun.errors import StorageError
from backrun.jobs import Job, JobState
from backrun.storage import fs

from . import window
from .files import Files
from .flush import CompletionFlusher
from .layout import (
    BUCKET_US,
    CLAIM_XATTR,
    FINISHED_DIRS,
    GRAB_SUFFIX,
    Place,
    RunningName,
    claim_name,
    encode_queue,
    finished_name,
    from_key,
    grab_name,
    parse_claim_note,
    parse_finished,
    parse_grab,
    parse_ready,
    parse_running,
    ready_name,
    running_name,
    to_key,
    token_of,
)
from .locks import LockHolder
from .progress import read_progress
from .window import ReadyCache

__all__ = [
    "Claimed",
    "Found",
    "StoreContext",
    "from_ns",
    "storage_errors",
    "to_ns",
    "wraps_os_errors",
]

logger = logging.getLogger("backrun.storage.jsonfile")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
P = ParamSpec("P")
R = TypeVar("R")
_US = timedelta(microseconds=1)


def to_ns(moment: datetime) -> int:
    """Nanoseconds since 1970 (for file times), at microsecond precision."""
    return (moment - _EPOCH) // _US * 1000


def from_ns(ns: int) -> datetime:
    """The inverse of :func:`to_ns`."""
    return _EPOCH + (ns // 1000) * _US


@contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Turn an ``OSError`` from the file system into a :class:`StorageError`."""
    try:
        yield
    except OSError as exc:
        raise StorageError(f"job store: {what} failed: {exc}") from exc


def wraps_os_errors(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a method so that an ``OSError`` it meets surfaces as a :class:`StorageError`."""

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with storage_errors(what):
                return method(*args, **kwargs)

        return wrapper

    return decorate


@dataclass(frozen=True, slots=True)
class Found:
    """Where a job was found: ``kind`` is ready, later, running, finished or grabbed."""

    kind: Place
    path: str
    job: Job
    qenc: str = ""
    running: RunningName | None = None


FindFunc = Callable[[str], Found | None]


@dataclass(frozen=True, slots=True)
class Claimed:
    """The record a claim of this store found in its running file ``name`` (inode ``ino``).

    Only a change that writes a new file (a new inode, while the old one is
    still allocated) can change what the file holds; a success by rename
    checks the inode instead of reading the record again.
    """

    name: str
    record: Job
    ino: int


class StoreContext:
    """Paths, per-queue caches and the grab/publish/heal moves of the JSON store."""

    def __init__(
        self,
        root: str,
        *,
        fsync: bool,
        retention: timedelta = timedelta(days=7),
        tmp_grace: timedelta = timedelta(minutes=10),
        ready_window: int | None = None,
    ) -> None:
        self.root = root
        self.fsync = fsync
        self.retention = retention
        self.tmp_grace = tmp_grace
        self.limits_dir = os.path.join(root, "limits")
        """``limits/`` under the root (made on first use; its mtime moves when a slot frees)."""
        self.is_watched: Callable[[], bool] = lambda: False
        self.claims_full = False  # the last claim came back full: trust recent listings
        self.facts: dict[str, Job] = {}  # limited claims: the records of held ready jobs
        self.flusher = CompletionFlusher()
        self.xattrs = True  # False once the file system refused an extended attribute
        self.files = Files(root, fsync=fsync)
        self.locks = LockHolder()
        self.session = secrets.token_hex(8)
        self.session_path = os.path.join(root, "sessions", self.session + ".lock")
        self.running_dir = os.path.join(root, "running")
        self.cancels_dir = os.path.join(root, "cancels")
        self.workers_dir = os.path.join(root, "workers")
        self.queues_dir = os.path.join(root, "q")
        self.mutex = threading.RLock()
        # mine, claimed and busy only: a completion never waits for a claim's window work.
        self.claims_lock = threading.Lock()
        self.caches: dict[str, ReadyCache] = {}
        self.made: set[str] = set()
        self.ready_window = ready_window  # None: window.WINDOW
        self.mine: dict[str, str] = {}  # job id -> running name, for claims made here
        self.claimed: dict[str, Claimed] = {}  # job id -> what its claim here read (or knew)
        self.busy: set[tuple[str, str]] = set()  # (job id, token) of owner writes under way
        self.stranded: set[str] = set()  # own grabs a failed step could not drop
        self.pending_batches: set[str] = set()  # own batch dirs a failed step left
        self._later: dict[str, tuple[int, list[int]]] = {}
        self._finished_dirs: dict[str, tuple[str, ...]] = {}
        self._queues: tuple[int, list[str]] | None = None
        self._queues_checked = 0.0
        self._later_checked: dict[str, float] = {}

    def watched(self) -> bool:
        """True if a watcher wakes the workers when a ready directory changes."""
        return self.is_watched()

    # -- paths ----------------------------------------------------------------

    def qdir(self, qenc: str, sub: str) -> str:
        """The directory ``sub`` of the encoded queue ``qenc``."""
        return os.path.join(self.queues_dir, qenc, sub)

    @staticmethod
    def names_in(directory: str) -> list[str]:
        """The names in ``directory``; none if it is missing (a crash mid-creation)."""
        try:
            return fs.listdir(directory)
        except FileNotFoundError:
            return []

    @staticmethod
    def iter_names_in(directory: str) -> Iterator[str]:
        """The names in ``directory`` one at a time; none if it is missing.

        For the finished directories, which hold every job of the retention
        period: a list of all their names would cost the worker megabytes at
        each purge or scrape, and the allocator keeps the peak.
        """
        try:
            yield from fs.iter_names(directory)
        except FileNotFoundError:
            return

    def queue_dirs(self, *, fresh: bool = True) -> list[str]:
        """The encoded names of all queues, re-listed only when ``q/`` changed.

        With ``fresh=False`` (the claim path) a check younger than
        :data:`RECHECK_S` is trusted without even a stat.
        """
        seen = self._queues
        if not fresh and seen is not None and _recent(self._queues_checked):
            return seen[1]
        mtime = fs.stat(self.queues_dir).st_mtime_ns
        self._queues_checked = time.monotonic()
        if seen is not None and seen[0] == mtime and _settled(mtime):
            return seen[1]
        names = sorted(fs.listdir(self.queues_dir))
        self._queues = (mtime, names)
        return names

    def ensure_queue(self, qenc: str) -> None:
        """Create a queue's directories once (they are never removed)."""
        if qenc in self.made:
            return
        base = os.path.join(self.queues_dir, qenc)
        created = False
        for path in (base, *(os.path.join(base, s) for s in _QUEUE_SUBDIRS)):
            try:
                fs.mkdir(path)
                created = True
            except FileExistsError:
                pass
        if created:
            self._queues = None
            self.files.sync_dir(self.queues_dir)
            self.files.sync_dir(base)
        self.made.add(qenc)

    def cache(self, qenc: str) -> ReadyCache:
        """The ready window of the encoded queue ``qenc`` (made on first use)."""
        cache = self.caches.get(qenc)
        if cache is None:
            directory = self.qdir(qenc, "ready")
            cache = self.caches[qenc] = ReadyCache(
                directory,
                lambda name: self.files.quarantine(
                    os.path.join(directory, name), "not a job file name in ready/"
                ),
                window=self.ready_window,
            )
        return cache

    def waiting_path(self, job: Job, reference: datetime | None) -> tuple[str, str, str]:
        """Return (qenc, directory, name) for a SCHEDULED or QUEUED job.

        A job due in a later 5-minute bucket than ``reference`` waits in
        ``later/<bucket>/``, out of the claim path's way.
        """
        assert job.run_at is not None
        qenc = encode_queue(job.queue)
        name = ready_name(job.id, job.priority, job.run_at, job.state)
        bucket = to_key(job.run_at) // BUCKET_US
        ref = reference if reference is not None else datetime.now(UTC)
        if bucket > to_key(ref) // BUCKET_US:
            return qenc, self.qdir(qenc, os.path.join("later", f"{bucket:012d}")), name
        return qenc, self.qdir(qenc, "ready"), name

    def finished_dirs(self, qenc: str) -> tuple[str, ...]:
        """The finished directories of the encoded queue ``qenc``, each with a trailing ``/``."""
        dirs = self._finished_dirs.get(qenc)
        if dirs is None:
            dirs = self._finished_dirs[qenc] = tuple(
                os.path.join(self.qdir(qenc, sub), "") for sub in FINISHED_DIRS.values()
            )
        return dirs

    def finished_path(self, job: Job) -> tuple[str, str]:
        """The encoded queue and the path a finished ``job`` is stored at."""
        qenc = encode_queue(job.queue)
        return qenc, os.path.join(self.qdir(qenc, FINISHED_DIRS[job.state]), finished_name(job.id))

    def ensure_dir(self, path: str) -> None:
        """Create a later/ bucket directory if it is missing."""
        try:
            fs.mkdir(path)
        except FileExistsError:
            return
        self._later.pop(os.path.basename(os.path.dirname(os.path.dirname(path))), None)
        self.files.sync_dir(os.path.dirname(path))

    # -- far-future buckets ---------------------------------------------------

    def later_buckets(self, qenc: str, *, fresh: bool = True) -> list[int]:
        """The bucket numbers under a queue's later/, re-listed only when it changed.

        With ``fresh=False`` (the claim path) a check younger than
        :data:`RECHECK_S` is trusted: buckets start at least minutes ahead.
        """
        seen = self._later.get(qenc)
        if not fresh and seen is not None and _recent(self._later_checked.get(qenc, 0.0)):
            return seen[1]
        path = self.qdir(qenc, "later")
        try:
            mtime = fs.stat(path).st_mtime_ns
        except FileNotFoundError:
            return []
        self._later_checked[qenc] = time.monotonic()
        if seen is not None and seen[0] == mtime and _settled(mtime):
            return seen[1]
        buckets = sorted(int(n) for n in fs.listdir(path) if n.isdigit())
        self._later[qenc] = (mtime, buckets)
        return buckets

    def promote(self, qenc: str, now_key: int, *, fresh: bool = True) -> None:
        """Move the jobs of every bucket that has begun into ready/ (one rename each)."""
        buckets = self.later_buckets(qenc, fresh=fresh)
        if not buckets or buckets[0] * BUCKET_US > now_key:
            return
        ready = self.qdir(qenc, "ready")
        cache = self.cache(qenc)
        for bucket in [b for b in buckets if b * BUCKET_US <= now_key]:
            path = self.qdir(qenc, os.path.join("later", f"{bucket:012d}"))
            try:
                names = fs.listdir(path)
            except FileNotFoundError:
                names = []
            for name in names:
                parsed = parse_ready(name)
                if parsed is None:
                    if not name.endswith(GRAB_SUFFIX):
                        self.files.quarantine(os.path.join(path, name), "not a job file name")
                    continue
                try:
                    fs.rename(os.path.join(path, name), os.path.join(ready, name))
                except FileNotFoundError:
                    continue
                cache.add(parsed)
            try:
                fs.rmdir(path)
                buckets.remove(bucket)
            except FileNotFoundError:
                buckets.remove(bucket)
            except OSError:
                pass  # a job arrived meanwhile: promoted next time

    # -- running files --------------------------------------------------------

    def running_entries(self) -> list[str]:
        """The names in ``running/``."""
        return fs.listdir(self.running_dir)

    def running_name_of(self, job_id: str, token: str) -> str | None:
        """The running file name of claim ``token`` of ``job_id``, if it exists."""
        name = self.mine.get(job_id)
        if name is not None and token_of(name) == token:
            return name
        prefix = claim_name(job_id, token, "~")
        for grabbed in list(self.stranded):
            base = os.path.basename(grabbed)
            if base.startswith(prefix) and os.path.dirname(grabbed) == self.running_dir:
                original = parse_grab(base)
                if original is not None:
                    return original[0]
        for entry in self.running_entries():
            if entry.startswith(prefix) and not entry.endswith(GRAB_SUFFIX):
                return entry
        return None

    def forget_claim(self, job_id: str, token: str) -> bool:
        """Drop claim ``token`` of ``job_id`` from :attr:`mine`; True if it was there.

        Only that claim: this process may have claimed the job again meanwhile.
        """
        with self.claims_lock:
            return self.forget_claim_locked(job_id, token)

    def forget_claim_locked(self, job_id: str, token: str) -> bool:
        """:meth:`forget_claim`, :attr:`claims_lock` held."""
        name = self.mine.get(job_id)
        if name is None or token_of(name) != token:
            return False
        del self.mine[job_id]
        self.claimed.pop(job_id, None)
        return True

    def marker_path(self, job_id: str, token: str) -> str:
        """The cancel-request marker of claim ``token`` of ``job_id``."""
        return os.path.join(self.cancels_dir, claim_name(job_id, token))

    def has_marker(self, job_id: str, token: str) -> bool:
        """True if a cancel was requested for claim ``token`` of ``job_id``."""
        try:
            fs.lstat(self.marker_path(job_id, token))
        except FileNotFoundError:
            return False
        return True

    def running_job(
        self, record: Job, rn: RunningName, path: str, *, lease_ns: int | None = None
    ) -> Job | None:
        """The job a running file stands for: its record, plus the claim its name records.

        ``lease_ns`` is given by a claim that has just stamped the lease (and
        whose fresh token can have no cancel marker yet).
        """
        if lease_ns is None:
            try:
                lease = from_ns(fs.lstat(path).st_mtime_ns)
            except FileNotFoundError:
                return None
        else:
            lease = from_ns(lease_ns)
        job = claimed_view(record, rn)
        cancel = job.cancel_requested or (lease_ns is None and self.has_marker(rn.job_id, rn.token))
        if lease_ns is None:  # not a fresh claim: the owner may have reported progress
            progress = read_progress(self.root, rn.job_id, rn.token)
            if progress is not None:
                return job.replace(
                    lease_expires_at=lease, cancel_requested=cancel, progress=progress
                )
        return job.replace(lease_expires_at=lease, cancel_requested=cancel)

    def succeeded_view(self, record: Job, path: str) -> Job:
        """The SUCCEEDED job a file renamed into ``succeeded/`` by its owner stands for.

        Its record is still the one it had while waiting or running; the
        claim and the finish are in its :data:`CLAIM_XATTR` (set before the
        rename). Without one, the record is laid over with what the file
        itself says (finished_at = the earlier of mtime and ctime).
        """
        try:
            note = parse_claim_note(fs.getxattr(path, CLAIM_XATTR))
        except OSError:
            note = None
        if note is not None and note[0].job_id == record.id:
            rn, finished_key = note
            return claimed_view(record, rn).replace(
                state=JobState.SUCCEEDED,
                finished_at=from_key(finished_key),
                lease_expires_at=None,
                cancel_requested=False,
            )
        try:
            st = fs.lstat(path)
            finished = from_ns(min(st.st_mtime_ns, st.st_ctime_ns))
        except FileNotFoundError:
            finished = None
        attempts = record.attempts + (record.state is not JobState.RUNNING)
        return record.replace(
            state=JobState.SUCCEEDED,
            attempts=attempts,
            finished_at=finished,
            lease_expires_at=None,
            cancel_requested=False,
        )

    def new_running_name(self, job: Job, old: RunningName) -> str:
        """The running name ``job`` is written under: ``old``'s if the claim is the same."""
        if job.claim_token == old.token:
            return old.name
        token = job.claim_token or secrets.token_hex(8)
        started = job.started_at or from_key(old.started_key)
        return running_name(job.id, token, started, job.worker_id or old.worker_id)

    # -- grab, publish, heal --------------------------------------------------

    def ensure_session(self) -> None:
        """Hold this store's session lock (needed before the first grab)."""
        if not self.locks.holds(self.session_path):
            self.locks.acquire(self.session_path)

    def grab(self, path: str) -> str:
        """Take ``path`` aside under this session; ``FileNotFoundError`` if someone else has it."""
        self.ensure_session()
        grabbed = grab_name(path, self.session)
        try:
            fs.rename(path, grabbed)
        except FileNotFoundError:
            if grabbed not in self.stranded:
                raise
            self.stranded.discard(grabbed)  # our own earlier, failed attempt
        return grabbed

    def drop_grab(self, grabbed: str) -> None:
        """Delete a grabbed file whose content was published elsewhere (gone is fine)."""
        try:
            fs.unlink(grabbed)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not remove %s (maintain() retries): %s", grabbed, exc)
            self.stranded.add(grabbed)

    def ungrab(self, grabbed: str) -> None:
        """Undo a grab after a failed publish; if even that fails, maintain() retries."""
        try:
            fs.rename(grabbed, grabbed.removesuffix(grab_name("", self.session)))
        except OSError:
            self.stranded.add(grabbed)

    def publish(self, tmp: str, directory: str, name: str) -> str:
        """Rename a written record into ``directory`` (created if a later/ bucket)."""
        dest = os.path.join(directory, name)
        try:
            fs.rename(tmp, dest)
        except FileNotFoundError:
            if not os.path.basename(os.path.dirname(directory)) == "later":
                raise
            self.ensure_dir(directory)
            fs.rename(tmp, dest)
        return dest

    def heal_grab(self, grabbed: str, locate_elsewhere: FindFunc) -> None:
        """Finish or undo the change a gone session (or a failed step) left half-done."""
        split = parse_grab(os.path.basename(grabbed))
        if split is None:
            return
        original = split[0]
        job_id = _job_id_of(original)
        if job_id is None:
            return
        if locate_elsewhere(job_id) is not None:
            self.files.discard(grabbed)
        else:
            with suppress(FileNotFoundError):
                fs.rename(grabbed, os.path.join(os.path.dirname(grabbed), original))

    def grab_dirs(self) -> Iterator[str]:
        """Every directory a grab can be in."""
        yield self.running_dir
        for qenc in self.queue_dirs():
            yield self.qdir(qenc, "ready")
            for sub in FINISHED_DIRS.values():
                yield self.qdir(qenc, sub)
            for bucket in self.later_buckets(qenc):
                yield self.qdir(qenc, os.path.join("later", f"{bucket:012d}"))

    def heal_session(self, session: str, locate_elsewhere: FindFunc) -> None:
        """Heal every grab a gone session left behind."""
        suffix = grab_name("", session)
        for directory in list(self.grab_dirs()):
            try:
                names = fs.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if name.endswith(suffix):
                    self.heal_grab(os.path.join(directory, name), locate_elsewhere)


_QUEUE_SUBDIRS = ("ready", "later", *FINISHED_DIRS.values())


def claimed_view(record: Job, rn: RunningName) -> Job:
    """``record`` as claim ``rn`` holds it: the claim fields come from the running name."""
    if record.state is JobState.RUNNING and record.claim_token == rn.token:
        return record
    return record.replace(
        state=JobState.RUNNING,
        attempts=record.attempts + 1,
        worker_id=rn.worker_id,
        started_at=from_key(rn.started_key),
        claim_token=rn.token,
    )


def _recent(checked: float) -> bool:
    return time.monotonic() - checked < window.RECHECK_S


def _settled(mtime_ns: int) -> bool:
    return time.time_ns() - mtime_ns > window.RACY_NS


def _job_id_of(name: str) -> str | None:
    for parse in (parse_ready, parse_running):
        parsed = parse(name)
        if parsed is not None:
            return parsed.job_id
    return parse_finished(name)
