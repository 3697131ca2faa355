"""One ready directory's names: a bounded window in memory, re-listed only when it must be.

Choosing a job to claim reads names only. A listing is trusted until the
directory's mtime moves; since the kernel stamps mtimes with a coarse clock,
a listing taken within :data:`RACY_NS` of the directory's last change is
re-checked next time (as git does for its index). While due jobs remain in
memory, re-listing after another process's change is rate-limited, so a busy
directory costs a bounded share of the claims; this store's own changes go
straight into memory.

**The window.** Only the ``window`` names that will be claimed first are
kept parsed: ranked by "due when listed" first, then by name (priority,
run_at, id), which is the claim order. For every other name the cache keeps
its id (an ``int``, for exact duplicate checks), the counts per state and the
earliest run key, so a backlog of a million jobs costs a few bytes a job
instead of a parsed record. The window is refilled by a streaming re-list
when it holds no due job while hidden ones are due, and (rate-limited) when a
hidden job that was not due when listed has become due, since it may sort
before the window's jobs. Hidden names that were due when listed sort after
every name in the window, so claim order is exact between re-lists.

**Re-listing without the store's lock.** A claim whose window still holds
due jobs does not need a re-list to go on, so it makes that re-list a
:class:`Listing`: the directory is read and ranked without the lock while
other threads keep claiming from the current window, and the lock is held
only to swap the result in. Meanwhile every :meth:`ReadyCache.add` and
:meth:`ReadyCache.discard` is also journaled, and replayed on the new
listing, so a change this store made while the directory was being read is
neither lost nor undone. A listing made under the lock meanwhile supersedes
it (the swap is dropped).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Collection, Iterator
from typing import NamedTuple

from backrun.jobs import JobState
from backrun.storage import fs

from .layout import GRAB_SUFFIX, ReadyName, parse_ready

__all__ = [
    "RACY_NS",
    "RECHECK_S",
    "RECORDS",
    "RECORD_BYTES",
    "RELIST_COST_FACTOR",
    "RELIST_MIN_S",
    "WINDOW",
    "Listing",
    "ReadyCache",
    "Written",
]

RACY_NS = 20_000_000
"""A listing taken this soon (ns) after the directory's last change is not trusted."""
RELIST_MIN_S = 0.005
RELIST_COST_FACTOR = 10.0
"""While due jobs remain, re-list at most every max(RELIST_MIN_S, factor x listing cost)."""
RECHECK_S = 0.05
"""The claim path re-checks q/ and later/ (queues, far-future buckets) at most this often."""
WINDOW = 4096
"""Default number of ready names per queue kept parsed in memory."""
RECORDS = 4096
"""Most records per queue kept from this store's own adds, so their claims need no read."""
RECORD_BYTES = 2 << 20
"""Most bytes of such records kept per queue."""
_FORGET_AFTER = 64
"""A window grown this many times its size by this store's adds, unlisted, starts over."""
_NO_KEY = 1 << 80  # later than any run key


class Written(NamedTuple):
    """A record this store wrote to a ready file, and that file's identity when written."""

    data: bytes
    ino: int
    mtime_ns: int
    size: int

    def same_file(self, ino: int, mtime_ns: int, size: int) -> bool:
        """True if a file with this inode, mtime and size is the one written.

        Every change of a waiting job writes a new file (a new inode, while
        the old one is still allocated) and renames it into place, so a file
        rewritten under the same name is never taken for the written one.
        """
        return ino == self.ino and mtime_ns == self.mtime_ns and size == self.size


_Journal = list[tuple[str, ReadyName | None, Written | None]]
"""A cache's adds (with the parsed name) and discards (``None``), in order."""


class _Ranked(NamedTuple):
    """A listing ranked into a window, not yet swapped in."""

    live: dict[str, ReadyName]
    by_id: dict[str, str]
    pending: list[tuple[int, str]]
    ids: set[int]
    counts: dict[JobState, int]
    strangers: list[str]
    hidden_min: int
    hidden_soon: int
    rank_now: int
    mtime_ns: int
    racy: bool


class Listing:
    """A re-list of a ready directory to run without the store's lock (see ``refresh``)."""

    def __init__(self, cache: ReadyCache, now_key: int, journal: _Journal) -> None:
        self.cache = cache
        self.now_key = now_key
        self.journal = journal
        self.read: tuple[_Ranked, float] | None = None  # the ranked listing, its cost
        self.listed_at = 0.0

    def run(self) -> None:
        """Stat, list and rank the directory (no lock held); :meth:`ReadyCache.install` next."""
        self.read = self.cache._read(self.now_key)
        self.listed_at = time.monotonic()


class ReadyCache:
    """The waiting jobs of one queue's ready directory. Not thread-safe: the store locks."""

    def __init__(
        self,
        path: str,
        on_stranger: Callable[[str], None] | None = None,
        *,
        window: int | None = None,
    ) -> None:
        self.path = path
        self.window = max(1, window if window is not None else WINDOW)
        self._on_stranger = on_stranger
        self._strangers: set[str] = set()  # names not of a job, reported once each
        self.mtime_ns = -1
        self.racy = True
        self.listed_at = float("-inf")
        self.list_cost = 0.0
        self.live: dict[str, ReadyName] = {}  # the window
        self.by_id: dict[str, str] = {}  # the window's ids
        self.records: dict[str, Written] = {}  # of this store's adds still in the window
        self._record_bytes = 0  # their sizes' sum
        self._due: list[str] = []
        self._pending: list[tuple[int, str]] = []
        self._ids: set[int] = set()  # every known name's id, in the window or not
        self._counts = {JobState.SCHEDULED: 0, JobState.QUEUED: 0}
        self._ranked_at = 0  # the "now" the window was ranked with
        self._hidden = 0  # names outside the window
        self._hidden_min = 0  # earliest run key among them (may be stale-low)
        self._hidden_soon = 0  # earliest run key among them not due at _ranked_at (a bound)
        self._journal: _Journal | None = None  # while a Listing is under way: changes since

    # -- listing -----------------------------------------------------------------

    def refresh(
        self,
        now_key: int,
        *,
        force: bool = False,
        watched: bool = False,
        exclude: Collection[str] = (),
        defer: bool = False,
    ) -> Listing | None:
        """Re-list the directory if it changed (and, while jobs are due, not too often).

        ``watched``: a watcher will wake the caller when the directory changes,
        so a listing younger than :data:`RELIST_MIN_S` is trusted as it is.
        A window that holds no due job while hidden ones may be due is refilled
        whatever the directory's mtime says. ``exclude``: names a caller has
        taken out of the window (jobs a limit holds back); a listing leaves
        them out, and the caller puts them back with :meth:`add`.

        ``defer``: a re-list the caller can do without (due jobs remain in the
        window) is returned as a :class:`Listing` instead of made here; the
        caller runs it without the lock, then installs it under the lock. None
        is returned while another thread's listing is under way.
        """
        since = time.monotonic() - self.listed_at
        pause = max(RELIST_MIN_S, RELIST_COST_FACTOR * self.list_cost)
        refill = self._must_refill(now_key, settled=since >= pause)
        if not force and not refill:
            has_due = self.has_due(now_key)
            if since < pause and has_due:
                return None
            if watched and since < RELIST_MIN_S:
                return None
            if defer and has_due and not exclude:
                if self._journal is not None:
                    return None  # another thread is re-listing: claim from the window meanwhile
                self._journal = []
                return Listing(self, now_key, self._journal)
        read = self._read(now_key, refill=refill, exclude=exclude)
        if read is not None:
            self._journal = None  # a listing under way would be older: its swap is dropped
            self._apply(read[0])
            self.listed_at = time.monotonic()
            self.list_cost = read[1]
        return None

    def _read(
        self, now_key: int, *, refill: bool = False, exclude: Collection[str] = ()
    ) -> tuple[_Ranked, float] | None:
        """The directory ranked, and what listing it cost; None if unchanged. Changes nothing."""
        try:
            st = fs.stat(self.path)
        except FileNotFoundError:
            return self._rank(iter(()), -1, now_key, racy=False), 0.0
        if st.st_mtime_ns == self.mtime_ns and not self.racy and not refill:
            return None
        started = time.monotonic()
        racy = time.time_ns() - st.st_mtime_ns < RACY_NS
        names = fs.iter_names(self.path)
        if exclude:
            names = (name for name in names if name not in exclude)
        ranked = self._rank(names, st.st_mtime_ns, now_key, racy=racy)
        return ranked, time.monotonic() - started

    def install(self, listing: Listing) -> None:
        """Swap a :class:`Listing` in (the lock held), then replay what changed meanwhile.

        Dropped if a listing under the lock came in between, or if the
        listing did not finish (its error reaches the caller).
        """
        if listing.journal is not self._journal:
            return  # superseded
        journal, self._journal = self._journal, None
        if listing.read is None:
            return  # unchanged, or the listing failed
        self._apply(listing.read[0])
        self.listed_at = listing.listed_at
        self.list_cost = listing.read[1]
        for name, parsed, written in journal:
            if parsed is None:
                self.discard(name)
            else:
                self.add(parsed, written)

    def _must_refill(self, now_key: int, *, settled: bool) -> bool:
        """True if a hidden name may now be claimable before the window's best."""
        if not self._hidden or self._hidden_min > now_key:
            return False
        best = self.best_due(now_key)
        if best is None:
            return True  # the window is spent and a hidden job may be due
        # One not due when ranked may be due now and sort first.
        return settled and self._hidden_soon <= now_key

    def _rank(self, names: Iterator[str], mtime_ns: int, now_key: int, *, racy: bool) -> _Ranked:
        """Rank ``names`` into a window. Changes nothing: it may run without the lock."""
        rank_now = max(now_key, self._ranked_at)
        known = self.live  # a name's parse never changes: reuse the window's
        ids: set[int] = set()
        counts = {JobState.SCHEDULED: 0, JobState.QUEUED: 0}
        strangers: list[str] = []
        lowest = [_NO_KEY, _NO_KEY]  # earliest run key of all names, of those not due

        def ranked() -> Iterator[tuple[bool, str, ReadyName]]:
            for name in names:
                parsed = known.get(name)
                if parsed is None:
                    if name.endswith(GRAB_SUFFIX):
                        continue
                    parsed = parse_ready(name)
                    if parsed is None:
                        if name not in self._strangers:
                            strangers.append(name)
                        continue
                ids.add(int(parsed.job_id, 16))
                counts[parsed.state] += 1
                key = parsed.run_key
                later = key > rank_now
                if key < lowest[0]:
                    lowest[0] = key
                if later and key < lowest[1]:
                    lowest[1] = key
                yield later, name, parsed

        window = heapq.nsmallest(self.window, ranked())
        live = {name: parsed for _, name, parsed in window}
        pending = [(p.run_key, p.name) for p in live.values()]
        heapq.heapify(pending)
        # Bounds, not exact values (hidden keys are not kept): when the
        # window's worst is not due, every hidden name is not due either.
        worst_later = bool(window) and window[-1][0]
        return _Ranked(
            live=live,
            by_id={parsed.job_id: name for name, parsed in live.items()},
            pending=pending,
            ids=ids,
            counts=counts,
            strangers=strangers,
            hidden_min=lowest[1] if worst_later else lowest[0],
            hidden_soon=lowest[1],
            rank_now=rank_now,
            mtime_ns=mtime_ns,
            racy=racy,
        )

    def _apply(self, ranked: _Ranked) -> None:
        """Make a ranked listing the window (under the lock: only what is cheap)."""
        self.mtime_ns = ranked.mtime_ns
        self.racy = ranked.racy
        self._ranked_at = ranked.rank_now
        self.live = ranked.live
        self.by_id = ranked.by_id
        records = self.records
        self.records = {name: records[name] for name in records.keys() & self.live.keys()}
        self._record_bytes = sum(written.size for written in self.records.values())
        self._ids = ranked.ids
        self._counts = ranked.counts
        self._hidden = len(ranked.ids) - len(ranked.live)
        self._hidden_min = ranked.hidden_min
        self._hidden_soon = ranked.hidden_soon
        self._due = []
        self._pending = ranked.pending
        for name in ranked.strangers:
            self._strangers.add(name)
            if self._on_stranger is not None:
                self._on_stranger(name)

    # -- this store's own changes ----------------------------------------------------

    def add(self, parsed: ReadyName, written: Written | None = None) -> None:
        """Record a file this store has just written (with its record, if ``written``)."""
        if self._journal is not None:
            self._journal.append((parsed.name, parsed, written))
        if written is not None:
            self.take_record(parsed.name)
            if len(self.records) < RECORDS and self._record_bytes + written.size <= RECORD_BYTES:
                self.records[parsed.name] = written
                self._record_bytes += written.size
        if parsed.name in self.live:
            return
        old = self.by_id.get(parsed.job_id)
        if old is not None:
            self.discard(old)
        key = int(parsed.job_id, 16)
        if key in self._ids:  # under a hidden name we do not know: re-list to count it
            self.racy = True
        else:
            self._ids.add(key)
            self._counts[parsed.state] += 1
        # Always into the window, whatever its size: it stays a superset of
        # the names to claim first, so claim order stays exact; the next
        # listing trims it.
        self.live[parsed.name] = parsed
        self.by_id[parsed.job_id] = parsed.name
        heapq.heappush(self._pending, (parsed.run_key, parsed.name))
        if len(self.live) > _FORGET_AFTER * self.window:
            self._forget()  # a producer that never lists: keep its memory bounded

    def _forget(self) -> None:
        """Drop everything known; the next :meth:`refresh` lists the directory."""
        self._journal = None
        self._apply(self._rank(iter(()), -1, self._ranked_at, racy=True))
        self.listed_at = float("-inf")

    def discard(self, name: str) -> None:
        """Forget a file that was claimed, moved or found gone."""
        if self._journal is not None:
            self._journal.append((name, None, None))
        parsed = self.live.pop(name, None)
        self.take_record(name)
        hidden = parsed is None
        if parsed is None:
            parsed = parse_ready(name)
            if parsed is None:
                return
        if self.by_id.get(parsed.job_id) == name:
            del self.by_id[parsed.job_id]
        elif parsed.job_id in self.by_id:
            return  # an old name of a job the window holds under its new one
        key = int(parsed.job_id, 16)
        if key in self._ids:
            self._ids.discard(key)
            self._counts[parsed.state] = max(0, self._counts[parsed.state] - 1)
            if hidden:
                self._hidden = max(0, self._hidden - 1)

    def take_record(self, name: str) -> Written | None:
        """The record this store wrote under ``name``, forgotten here (a claim takes it)."""
        written = self.records.pop(name, None)
        if written is not None:
            self._record_bytes -= written.size
        return written

    # -- questions ---------------------------------------------------------------------

    def _promote(self, now_key: int) -> None:
        pending = self._pending
        while pending and pending[0][0] <= now_key:
            _, name = heapq.heappop(pending)
            if name in self.live:
                heapq.heappush(self._due, name)

    def best_due(self, now_key: int) -> str | None:
        """The name that sorts first among jobs due at ``now_key``, or ``None``."""
        self._promote(now_key)
        due = self._due
        while due:
            name = due[0]
            parsed = self.live.get(name)
            if parsed is None:
                heapq.heappop(due)
            elif parsed.run_key > now_key:
                # A caller with an earlier "now" than a previous one: not due for it.
                heapq.heappop(due)
                heapq.heappush(self._pending, (parsed.run_key, name))
            else:
                return name
        return None

    def spent(self, now_key: int) -> bool:
        """True if the window holds no due job while a hidden one may be due."""
        return self._hidden > 0 and self._hidden_min <= now_key and not self.has_due(now_key)

    def has_due(self, now_key: int) -> bool:
        """True if some job in the window is due at ``now_key``."""
        return self.best_due(now_key) is not None

    def earliest(self) -> int | None:
        """The earliest run key among the known jobs (hidden ones bound it), or ``None``."""
        best: int | None = self._hidden_min if self._hidden else None
        for name in self._due:
            parsed = self.live.get(name)
            if parsed is not None and (best is None or parsed.run_key < best):
                best = parsed.run_key
        pending = self._pending
        while pending and pending[0][1] not in self.live:
            heapq.heappop(pending)
        if pending and (best is None or pending[0][0] < best):
            best = pending[0][0]
        return best

    def counts(self) -> dict[JobState, int]:
        """Jobs per state in the directory as last listed, with this store's changes."""
        return dict(self._counts)

    def holds(self, job_id: str) -> bool:
        """True if a ready name of ``job_id`` is known, in the window or not."""
        return int(job_id, 16) in self._ids

    @property
    def complete(self) -> bool:
        """True if every known name is in the window."""
        return self._hidden == 0

    def every_name(self) -> list[ReadyName]:
        """Every ready job of the directory: the window when complete, else a fresh listing."""
        if self.complete:
            return list(self.live.values())
        found: list[ReadyName] = []
        for name in fs.iter_names(self.path):
            parsed = parse_ready(name)
            if parsed is not None:
                found.append(parsed)
        return found

    def name_of(self, job_id: str) -> str | None:
        """The ready name of ``job_id``: from the window, else by scanning the directory."""
        name = self.by_id.get(job_id)
        if name is not None or self.complete or not self.holds(job_id):
            return name
        marker = f"~{job_id}~"
        for candidate in fs.iter_names(self.path):
            if marker in candidate and not candidate.endswith(GRAB_SUFFIX):
                return candidate
        return None
