"""A ready window re-listed without the store's lock stays exact.

A claim whose window still holds due jobs runs its re-list as a ``Listing``:
the directory is read without the lock while other threads add and claim,
and the result is swapped in afterwards with those changes replayed. Here
this store's adds and claims land at every point of the directory's reading
(Hypothesis chooses where), and the window that results must hand out every
job on disk, each once, in claim order, with exact counts, as a window made
from a fresh listing would.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backrun.errors import StorageError
from backrun.jobs import JobState
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage, window
from backrun.storage.jsonfile.layout import parse_ready, ready_name, to_key
from backrun.storage.jsonfile.window import ReadyCache
from tests.storage.factories import make_job

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(minutes=5)
NOW = to_key(T0)


@pytest.fixture(autouse=True)
def always_relist() -> Iterator[None]:
    saved = (window.RELIST_MIN_S, window.RELIST_COST_FACTOR, window.RACY_NS)
    window.RELIST_MIN_S = window.RELIST_COST_FACTOR = 0
    window.RACY_NS = 10**30  # every listing is racy: the next refresh lists again
    try:
        yield
    finally:
        window.RELIST_MIN_S, window.RELIST_COST_FACTOR, window.RACY_NS = saved


class Directory:
    """A ready directory and this store's changes to it (file, then cache; cache, then file)."""

    def __init__(self, path: Path, cache: ReadyCache) -> None:
        self.path = path
        self.cache = cache
        self.n = 0

    def add(self, priority: int) -> None:
        self.n += 1
        name = ready_name(f"{self.n:032x}", priority, T0, JobState.QUEUED)
        (self.path / name).write_bytes(b"{}")
        parsed = parse_ready(name)
        assert parsed is not None
        self.cache.add(parsed)

    def claim(self) -> str | None:
        """Take the window's best as a claim does: out of the window, then off the disk."""
        while (name := self.cache.best_due(NOW)) is not None:
            self.cache.discard(name)
            try:
                os.unlink(self.path / name)
                return name
            except FileNotFoundError:
                continue  # the window held a name already gone: a claim's rename fails alike
        return None


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start=st.lists(st.integers(-2, 2), max_size=12),
    during=st.lists(
        st.tuples(st.integers(0, 14), st.one_of(st.none(), st.integers(-2, 2))), max_size=10
    ),
    size=st.integers(1, 5),
)
def test_changes_made_while_a_listing_runs_are_kept(
    tmp_path_factory: pytest.TempPathFactory,
    start: list[int],
    during: list[tuple[int, int | None]],
    size: int,
) -> None:
    path = tmp_path_factory.mktemp("ready")
    cache = ReadyCache(str(path), window=size)
    directory = Directory(path, cache)
    for priority in start:
        directory.add(priority)
    directory.add(0)  # a due job in the window: the re-list may be deferred
    cache.refresh(NOW)
    listing = cache.refresh(NOW, defer=True)
    assert listing is not None
    assert cache.refresh(NOW, defer=True) is None  # one listing at a time

    # Changes land between the names the listing reads (None: a claim).
    changes = sorted(during, key=lambda change: change[0])
    real_iter = fs.iter_names

    def interleaved(directory_path: str) -> Iterator[str]:
        pending = list(changes)
        for position, name in enumerate(real_iter(directory_path)):
            while pending and pending[0][0] <= position:
                apply(pending.pop(0)[1])
            yield name
        for _, change in pending:
            apply(change)

    def apply(change: int | None) -> None:
        if change is None:
            directory.claim()
        else:
            directory.add(change)

    original, fs.iter_names = fs.iter_names, interleaved  # type: ignore[assignment]
    try:
        listing.run()
    finally:
        fs.iter_names = original  # type: ignore[assignment]
    cache.install(listing)

    on_disk = sorted(os.listdir(path))
    assert cache.counts() == {JobState.QUEUED: len(on_disk), JobState.SCHEDULED: 0}
    for name in on_disk:
        parsed = parse_ready(name)
        assert parsed is not None
        assert cache.holds(parsed.job_id)
    taken: list[str] = []
    while True:
        cache.refresh(NOW)
        name = directory.claim()
        if name is None:
            break
        taken.append(name)
    assert taken == on_disk  # every job once, in claim order (all are due: by name)
    assert cache.counts() == {JobState.QUEUED: 0, JobState.SCHEDULED: 0}


def test_a_listing_under_the_lock_supersedes_one_under_way(tmp_path: Path) -> None:
    cache = ReadyCache(str(tmp_path), window=4)
    directory = Directory(tmp_path, cache)
    for _ in range(3):
        directory.add(0)
    cache.refresh(NOW)
    listing = cache.refresh(NOW, defer=True)
    assert listing is not None
    listing.run()
    directory.add(5)
    cache.refresh(NOW, force=True)  # lists now, under the lock
    directory.add(7)
    cache.install(listing)  # older than the forced listing: dropped
    assert cache.counts()[JobState.QUEUED] == 5
    on_disk = sorted(os.listdir(tmp_path))
    assert [directory.claim() for _ in range(5)] == on_disk
    assert directory.claim() is None


def test_a_failed_listing_lets_the_next_one_run(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=False)
    try:
        store.add_many([make_job(run_at=T0, at=T0) for _ in range(4)])
        assert len(store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE)) == 1

        def broken_ready_dir(operation: str, path: str) -> None:
            if operation == "listdir" and path.endswith("ready"):
                raise OSError(errno.EIO, "injected", path)

        previous = fs.set_hook(broken_ready_dir)
        try:
            with pytest.raises(StorageError, match="claim failed"):
                store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE)
        finally:
            fs.set_hook(previous)
        (cache,) = store.ctx.caches.values()
        assert cache.refresh(NOW, defer=True) is not None  # not stuck "under way"
    finally:
        store.close()
