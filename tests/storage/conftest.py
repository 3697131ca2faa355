"""One fixture, every backend: the contract suite runs against each store here.

Each backend has one factory below; a backend whose module or server is
missing is skipped with the reason (and fails instead under CI=true).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backrun.storage.base import Storage
from backrun.storage.memory import MemoryStorage


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def make_memory(tmp_path: Path) -> Storage:
    return MemoryStorage()


def make_jsonfile(tmp_path: Path) -> Storage:
    from backrun.storage.jsonfile import JsonFileStorage

    return JsonFileStorage(tmp_path / "store", fsync=False)


def make_postgres(tmp_path: Path) -> Storage:
    from tests.storage.postgres_support import fresh_postgres_storage

    storage = fresh_postgres_storage()
    if storage is None:
        _missing("PostgreSQL is not reachable at BACKRUN_TEST_POSTGRES_DSN")
    assert storage is not None
    return storage


BACKENDS: dict[str, Callable[[Path], Storage]] = {
    "memory": make_memory,
    "jsonfile": make_jsonfile,
    "postgres": make_postgres,
}


@pytest.fixture(params=sorted(BACKENDS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    store = BACKENDS[request.param](tmp_path)
    try:
        yield store
    finally:
        store.close()
