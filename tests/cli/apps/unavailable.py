"""An app whose store answers nothing: a worker must exit 3 before it starts anything."""

from __future__ import annotations

import backrun
from backrun.errors import StorageError


class DownStorage(backrun.MemoryStorage):
    def counts(self) -> dict[tuple[str, backrun.JobState], int]:
        raise StorageError("connection refused (the test's store is down)")


engine = backrun.Engine(DownStorage(), middleware=[])
