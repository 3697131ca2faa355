"""An app whose store fails in a way backrun does not expect: the worker crashes."""

from __future__ import annotations

from datetime import datetime

import backrun


class BrokenStorage(backrun.MemoryStorage):
    def register_worker(self, worker_id: str, *, now: datetime) -> None:
        raise RuntimeError("lock table corrupted")


engine = backrun.Engine(BrokenStorage(), middleware=[])
