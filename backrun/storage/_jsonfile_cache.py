"""One ready directory's names, kept in memory and re-listed only when the directory changed.

Choosing a job to claim reads names only. A listing is trusted until the
directory's mtime moves; since the kernel stamps mtimes with a coarse clock,
a listing taken within :data:`RACY_NS` of the directory's last change is
re-checked next time (as git does for its index). While due jobs remain in
memory, re-listing after another process's change is rate-limited, so a busy
directory costs a bounded share of the claims; this store's own changes go
straight into memory.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from . import fs
from ._jsonfile_layout import GRAB_SUFFIX, ReadyName, parse_ready

__all__ = ["RACY_NS", "RECHECK_S", "RELIST_COST_FACTOR", "RELIST_MIN_S", "ReadyCache"]

RACY_NS = 20_000_000
"""A listing taken this soon (ns) after the directory's last change is not trusted."""
RELIST_MIN_S = 0.005
RELIST_COST_FACTOR = 10.0
RECHECK_S = 0.05
"""The claim path re-checks q/ and later/ (queues, far-future buckets) at most this often."""
"""While due jobs remain, re-list at most every max(RELIST_MIN_S, factor x listing cost)."""


class ReadyCache:
    """The waiting jobs of one queue's ready directory. Not thread-safe: the store locks."""

    def __init__(self, path: str, on_stranger: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._on_stranger = on_stranger
        self._strangers: set[str] = set()  # names not of a job, reported once each
        self.mtime_ns = -1
        self.racy = True
        self.listed_at = float("-inf")
        self.list_cost = 0.0
        self.live: dict[str, ReadyName] = {}
        self.by_id: dict[str, str] = {}
        self._due: list[str] = []
        self._pending: list[tuple[int, str]] = []

    def refresh(self, now_key: int, *, force: bool = False, watched: bool = False) -> None:
        """Re-list the directory if it changed (and, while jobs are due, not too often).

        ``watched``: a watcher will wake the caller when the directory changes,
        so a listing younger than :data:`RELIST_MIN_S` is trusted as it is.
        """
        since = time.monotonic() - self.listed_at
        if not force:
            pause = max(RELIST_MIN_S, RELIST_COST_FACTOR * self.list_cost)
            if since < pause and self.has_due(now_key):
                return
            if watched and since < RELIST_MIN_S:
                return
        try:
            st = fs.stat(self.path)
        except FileNotFoundError:
            self._load([], -1, racy=False)
            return
        if st.st_mtime_ns == self.mtime_ns and not self.racy:
            return
        started = time.monotonic()
        names = fs.listdir(self.path)
        racy = time.time_ns() - st.st_mtime_ns < RACY_NS
        self._load(names, st.st_mtime_ns, racy=racy)
        self.listed_at = time.monotonic()
        self.list_cost = self.listed_at - started

    def _load(self, names: list[str], mtime_ns: int, *, racy: bool) -> None:
        self.mtime_ns = mtime_ns
        self.racy = racy
        self.live = {}
        self.by_id = {}
        for name in names:
            if name.endswith(GRAB_SUFFIX):
                continue
            parsed = parse_ready(name)
            if parsed is not None:
                self.live[name] = parsed
                self.by_id[parsed.job_id] = name
            elif name not in self._strangers:
                self._strangers.add(name)
                if self._on_stranger is not None:
                    self._on_stranger(name)
        self._due = []
        self._pending = [(p.run_key, p.name) for p in self.live.values()]
        heapq.heapify(self._pending)

    def add(self, parsed: ReadyName) -> None:
        """Record a file this store has just written."""
        if parsed.name in self.live:
            return
        old = self.by_id.get(parsed.job_id)
        if old is not None:
            self.discard(old)
        self.live[parsed.name] = parsed
        self.by_id[parsed.job_id] = parsed.name
        heapq.heappush(self._pending, (parsed.run_key, parsed.name))

    def discard(self, name: str) -> None:
        """Forget a file that was claimed, moved or found gone."""
        parsed = self.live.pop(name, None)
        if parsed is not None and self.by_id.get(parsed.job_id) == name:
            del self.by_id[parsed.job_id]

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

    def has_due(self, now_key: int) -> bool:
        """True if some remembered job is due at ``now_key``."""
        return self.best_due(now_key) is not None

    def earliest(self) -> int | None:
        """The earliest run key among the remembered jobs, or ``None``."""
        best: int | None = None
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
