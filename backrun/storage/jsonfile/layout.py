"""Where the JSON store keeps each job, and what its file names say.

Layout under the store's root (every directory 0700, every file 0600)::

    q/<queue>/ready/<P>~<R>~<id>~<s>.json     waiting jobs due within the current bucket
    q/<queue>/later/<bucket>/<same name>      far-future jobs, by 5-minute bucket
    q/<queue>/succeeded|dead|cancelled/<id>.json   finished (file mtime = finished_at)
    running/<id>~<token>~<S>~<worker>.json    claimed jobs (file mtime = lease expiry)
    cancels/<id>~<token>                      cancel requested for that claim
    workers/<worker>.lock                     flock held by each live worker
    sessions/<session>.lock                   flock held by each open store
    tmp/, corrupt/                            writes in progress; quarantined files

``P`` is ``2**62 - priority`` and ``R``/``S`` are microseconds since year 1,
zero-padded, so sorting ready names sorts by priority (highest first), then
run_at, then id; ``s`` is ``s`` (SCHEDULED) or ``q`` (QUEUED). A name with a
``~<session>.grab`` suffix is a file taken aside by a multi-step change.
"""

from __future__ import annotations

import os
import random
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from backrun.jobs import JobState

__all__ = [
    "BUCKET_US",
    "CLAIM_XATTR",
    "FINISHED_DIRS",
    "GRAB_SUFFIX",
    "Place",
    "ReadyName",
    "RunningName",
    "check_token",
    "check_worker_id",
    "claim_name",
    "claim_note",
    "decode_queue",
    "encode_queue",
    "finished_name",
    "from_key",
    "grab_name",
    "key_lock_name",
    "parse_claim",
    "parse_claim_note",
    "parse_finished",
    "parse_grab",
    "parse_ready",
    "parse_running",
    "random_hex",
    "ready_name",
    "running_name",
    "to_key",
    "token_of",
]

_YEAR_ONE = datetime(1, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_PRIORITY_OFFSET = 2**62
BUCKET_US = 300 * 1_000_000
"""Width of a far-future bucket: jobs due beyond the current 5 minutes wait in later/."""

GRAB_SUFFIX = ".grab"
FINISHED_DIRS = {
    JobState.SUCCEEDED: "succeeded",
    JobState.DEAD: "dead",
    JobState.CANCELLED: "cancelled",
}


class Place(StrEnum):
    """Where a job's file is: the kind of directory it was found in."""

    READY = "ready"
    LATER = "later"
    RUNNING = "running"
    FINISHED = "finished"
    GRABBED = "grabbed"
    """Taken aside (renamed with a session suffix) by a change under way."""


_SAFE_QUEUE = re.compile(r"\A[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}\Z")
_WORKER_ID = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_TOKEN = re.compile(r"\A[0-9a-f]{16}\Z")
_READY = re.compile(r"\A(\d{19})~(\d{18})~([0-9a-f]{32})~([sq])\.json\Z")
_RUNNING = re.compile(r"\A([0-9a-f]{32})~([0-9a-f]{16})~(\d{18})~([A-Za-z0-9_.-]+)\.json\Z")
_FINISHED = re.compile(r"\A([0-9a-f]{32})\.json\Z")
_CLAIM = re.compile(r"\A([0-9a-f]{32})~([0-9a-f]{16})(?:\.json)?\Z")
_GRAB = re.compile(r"\A(.+)~([0-9a-f]{16})\.grab\Z")
_LETTER = {JobState.SCHEDULED: "s", JobState.QUEUED: "q"}
_STATE = {"s": JobState.SCHEDULED, "q": JobState.QUEUED}


class _Randomness(threading.local):
    """A per-thread generator seeded from the OS, reseeded in a forked child.

    Claim tokens and temporary names must be unique, not secret; ``secrets``
    costs a system call each time (it showed in the claim profile).
    """

    generation = 0

    def __init__(self) -> None:
        self.rng = random.Random(os.urandom(32))
        self.seen = _Randomness.generation

    def hex(self, digits: int) -> str:
        """``digits`` random hex digits, reseeding first in a forked child."""
        if self.seen != _Randomness.generation:
            self.rng.seed(os.urandom(32))
            self.seen = _Randomness.generation
        return f"{self.rng.getrandbits(4 * digits):0{digits}x}"


def _after_fork() -> None:
    _Randomness.generation += 1


os.register_at_fork(after_in_child=_after_fork)
_randomness = _Randomness()


def random_hex(digits: int) -> str:
    """``digits`` random hex digits (a claim token, a temporary file's name)."""
    return _randomness.hex(digits)


def to_key(moment: datetime) -> int:
    """Microseconds from year 1 to ``moment``: a non-negative, order-keeping integer."""
    return (moment - _YEAR_ONE) // _US


def from_key(key: int) -> datetime:
    """The inverse of :func:`to_key`."""
    return _YEAR_ONE + key * _US


def encode_queue(queue: str) -> str:
    """Return the directory name of a queue; ``ValueError`` if it is too long to be one.

    Plain names are kept as they are; any other is ``~`` and its UTF-8 hex,
    which no plain name can start with, so the mapping is one-to-one.
    """
    if _SAFE_QUEUE.match(queue):
        return queue
    encoded = "~" + queue.encode("utf-8", "surrogatepass").hex()
    if len(encoded) > 201:
        raise ValueError(f"queue name too long for the file store: {queue[:40]!r}...")
    return encoded


def decode_queue(name: str) -> str:
    """The inverse of :func:`encode_queue`."""
    if name.startswith("~"):
        return bytes.fromhex(name[1:]).decode("utf-8", "surrogatepass")
    return name


def check_worker_id(worker_id: str) -> str:
    """Return ``worker_id`` if it is safe in a file name; ``ValueError`` otherwise."""
    if not isinstance(worker_id, str) or _WORKER_ID.match(worker_id) is None:
        raise ValueError(f"not a usable worker id: {worker_id!r:.80} (want [A-Za-z0-9_.-]+)")
    return worker_id


def check_token(token: object) -> str | None:
    """Return ``token`` if it looks like one of our claim tokens, else ``None``."""
    if isinstance(token, str) and _TOKEN.match(token):
        return token
    return None


@dataclass(frozen=True, slots=True)
class ReadyName:
    """What a ready file's name says."""

    name: str
    job_id: str
    run_key: int
    state: JobState


def ready_name(job_id: str, priority: int, run_at: datetime, state: JobState) -> str:
    """The file name of a waiting job; ``ValueError`` for an out-of-range priority."""
    if not -_PRIORITY_OFFSET <= priority <= _PRIORITY_OFFSET:
        raise ValueError(f"priority {priority} is out of range (at most 2**62 either way)")
    return (
        f"{_PRIORITY_OFFSET - priority:019d}~{to_key(run_at):018d}~{job_id}~{_LETTER[state]}.json"
    )


def parse_ready(name: str) -> ReadyName | None:
    """Parse a ready file's name; ``None`` if it is not one."""
    match = _READY.match(name)
    if match is None:
        return None
    return ReadyName(name, match[3], int(match[2]), _STATE[match[4]])


@dataclass(frozen=True, slots=True)
class RunningName:
    """What a running file's name says: the claim."""

    name: str
    job_id: str
    token: str
    started_key: int
    worker_id: str


def running_name(job_id: str, token: str, started_at: datetime, worker_id: str) -> str:
    """The file name of a claimed job."""
    return f"{job_id}~{token}~{to_key(started_at):018d}~{worker_id}.json"


def parse_running(name: str) -> RunningName | None:
    """Parse a running file's name; ``None`` if it is not one."""
    match = _RUNNING.match(name)
    if match is None or _WORKER_ID.match(match[4]) is None:
        return None
    return RunningName(name, match[1], match[2], int(match[3]), match[4])


def parse_grab(name: str) -> tuple[str, str] | None:
    """Split a grabbed file's name into (original name, session); ``None`` if not one."""
    match = _GRAB.match(name)
    if match is None:
        return None
    return match[1], match[2]


def finished_name(job_id: str) -> str:
    """The file name of a finished job in ``succeeded/``, ``dead/`` or ``cancelled/``."""
    return job_id + ".json"


def parse_finished(name: str) -> str | None:
    """The job id a finished file's name carries; ``None`` if it is not one."""
    match = _FINISHED.match(name)
    return None if match is None else match[1]


def claim_name(job_id: str, token: str, suffix: str = "") -> str:
    """``<id>~<token><suffix>``: the name of a file about one claim (cancel, slot, progress)."""
    return f"{job_id}~{token}{suffix}"


def parse_claim(name: str) -> tuple[str, str] | None:
    """(job id, token) of a claim file's name (with or without ``.json``); else ``None``."""
    match = _CLAIM.match(name)
    return None if match is None else (match[1], match[2])


def token_of(running: str) -> str | None:
    """The claim token a running file's name carries; ``None`` if it is not one."""
    parsed = parse_running(running)
    return None if parsed is None else parsed.token


def grab_name(name: str, session: str) -> str:
    """The name (or path) ``name`` is renamed to while session ``session`` changes it."""
    return f"{name}~{session}{GRAB_SUFFIX}"


def key_lock_name(key_file: str) -> str:
    """The lock file guarding a unique key's file (``<digest>.json``): one per 2-hex shard."""
    return key_file[:2] + ".lock"


CLAIM_XATTR = "user.backrun.claim"
"""The extended attribute a success by rename leaves on its file: the claim and the finish."""


def claim_note(running: str, finished_key: int) -> bytes:
    """The value of :data:`CLAIM_XATTR`: ``<running name>|<finished_at key>``."""
    return f"{running}|{finished_key:018d}".encode()


def parse_claim_note(data: bytes) -> tuple[RunningName, int] | None:
    """(claim, finished_at key) of a :func:`claim_note`; ``None`` if it is not one."""
    try:
        running, _, finished = data.decode("ascii").partition("|")
    except UnicodeDecodeError:
        return None
    parsed = parse_running(running)
    if parsed is None or len(finished) != 18 or not finished.isdigit():
        return None
    return parsed, int(finished)
