"""The JSON store's housekeeping and counts stream the finished directories.

The finished directories hold every job of the retention period (100,000 and
more on a busy store); a worker that lists one whole at each purge or scrape
pays megabytes of peak memory that the allocator then keeps. These tests
measure the Python allocations of a purge and of ``counts()`` over a store of
``FINISHED`` finished jobs: a list of their names alone would be ~1.8 MB.
"""

from __future__ import annotations

import os
import secrets
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backrun.jobs import JobState
from backrun.storage.jsonfile import JsonFileStorage
from tests.helpers import make_job

FINISHED = 20_000
PEAK_LIMIT = 256 * 1024  # bytes: far below one list of FINISHED names
_1971 = datetime(1971, 1, 1, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JsonFileStorage]:
    storage = JsonFileStorage(tmp_path / "s", fsync=False)
    storage.add(make_job())  # makes the queue's directories
    succeeded = tmp_path / "s" / "q" / "default" / "succeeded"
    succeeded.mkdir(exist_ok=True)
    for _ in range(FINISHED):
        # Empty files named like finished jobs: only their names and mtimes are read.
        (succeeded / f"{secrets.token_hex(16)}.json").touch()
    try:
        yield storage
    finally:
        storage.close()


def _peak_bytes(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_counts_streams_the_finished_directory(store: JsonFileStorage) -> None:
    counts: dict[object, int] = {}
    peak = _peak_bytes(lambda: counts.update(store.counts()))
    assert counts[("default", JobState.SUCCEEDED)] == FINISHED
    assert peak < PEAK_LIMIT


def test_purge_streams_the_finished_directory(store: JsonFileStorage, tmp_path: Path) -> None:
    succeeded = tmp_path / "s" / "q" / "default" / "succeeded"
    kept = sorted(os.listdir(succeeded))
    peak = _peak_bytes(lambda: store.purge(before=_1971))
    assert sorted(os.listdir(succeeded)) == kept  # nothing that old: everything stays
    assert peak < PEAK_LIMIT
    old = kept[:100]
    for name in old:
        os.utime(succeeded / name, ns=(0, 0))
    assert store.purge(before=_1971) == len(old)
    assert sorted(os.listdir(succeeded)) == kept[100:]


def test_records_kept_from_own_adds_cost_about_their_length(tmp_path: Path) -> None:
    # orjson's bytes keep the buffer they were encoded into (4-8 KB for a
    # small record); kept as they are, a window of own adds cost ~30 MB.
    storage = JsonFileStorage(tmp_path / "kept", fsync=False)
    try:
        storage.add(make_job())  # the queue's directories and caches exist
        adds = 1_000
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(adds):
                storage.add(make_job())
            per_add = (tracemalloc.get_traced_memory()[0] - before) / adds
        finally:
            tracemalloc.stop()
    finally:
        storage.close()
    assert per_add < 2_500  # bytes: the record (~500), its name and the window's entries
