"""What a live worker tells the store about itself, for operators.

A worker publishes a :class:`WorkerInfo` when it starts and twice per
recovery interval; any process on the same store reads them back with
``engine.workers()``. Stores keep it as a small JSON object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["WorkerInfo"]


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker as seen through the store.

    Attributes:
        id: the worker id stamped on the jobs it claims.
        host: the machine it runs on.
        pid: its process id on that machine.
        queues: the queues it takes jobs from, sorted; ``None`` for all.
        max_parallelism: how many jobs it runs at once at most.
        started_at: when it started.
        last_seen: when it last published this record.
        running: the ids of the jobs it runs now, sorted.
    """

    id: str
    host: str
    pid: int
    queues: tuple[str, ...] | None
    max_parallelism: int
    started_at: datetime
    last_seen: datetime
    running: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready values (times as ISO 8601 UTC)."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "queues": None if self.queues is None else list(self.queues),
            "max_parallelism": self.max_parallelism,
            "started_at": self.started_at.astimezone(UTC).isoformat(),
            "last_seen": self.last_seen.astimezone(UTC).isoformat(),
            "running": list(self.running),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerInfo:
        """Rebuild a record written by :meth:`to_dict`.

        Raises:
            ValueError: a field is missing or has the wrong type.
        """
        try:
            queues = data["queues"]
            return cls(
                id=_text(data["id"]),
                host=_text(data["host"]),
                pid=_int(data["pid"]),
                queues=None if queues is None else tuple(_text(q) for q in queues),
                max_parallelism=_int(data["max_parallelism"]),
                started_at=datetime.fromisoformat(_text(data["started_at"])),
                last_seen=datetime.fromisoformat(_text(data["last_seen"])),
                running=tuple(_text(j) for j in data["running"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a worker record: {exc}") from exc


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an int, got {type(value).__name__}")
    return value
