"""Row <-> Job mapping for the PostgreSQL store: the column list, parameters, row conversion.

The only place that knows the order of the ``jobs`` columns: statements select
:data:`COLUMNS` (or :func:`select_list`) and hand rows to :func:`row_to_job`;
writes take their parameters from :func:`insert_params` / :func:`update_params`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from backrun.jobs import Job, JobError, JobState
from backrun.serialization import progress_from_dict, progress_to_dict

__all__ = [
    "ARRAY_TYPES",
    "COLUMNS",
    "COLUMN_NAMES",
    "dump_errors",
    "insert_params",
    "row_to_job",
    "select_list",
    "update_params",
]

COLUMN_NAMES = (
    "id",
    "handler",
    "queue",
    "priority",
    "state",
    "attempts",
    "max_attempts",
    "run_at",
    "created_at",
    "started_at",
    "finished_at",
    "worker_id",
    "lease_expires_at",
    "claim_token",
    "cancel_requested",
    "errors",
    "headers",
    "payload",
    "run_alone",
    "result",
    "progress",
    "version",
    "followups",
    "unique_key",
    "unique_until",
    "limited",
    "concurrency_key",
)
_JSON_COLUMNS = frozenset({"errors", "headers", "payload", "result", "progress", "followups"})
ARRAY_TYPES = {
    "priority": "int[]",
    "attempts": "int[]",
    "max_attempts": "int[]",
    "cancel_requested": "bool[]",
    "run_alone": "bool[]",
    "limited": "bool[]",
    "unique_until": "timestamptz[]",
    "errors": "json[]",
    "headers": "json[]",
    "payload": "json[]",
    "result": "json[]",
    "progress": "json[]",
    "version": "int[]",
    "followups": "json[]",
    **{c: "timestamptz[]" for c in COLUMN_NAMES if c.endswith("_at")},
}


def select_list(alias: str) -> str:
    """The job columns for a SELECT (JSON columns as text), each prefixed by ``alias``."""
    return ", ".join(
        f"{alias}{c}::text" if c in _JSON_COLUMNS else f"{alias}{c}" for c in COLUMN_NAMES
    )


COLUMNS = select_list("")


def insert_params(jobs: Sequence[Job], channel: str) -> list[Any]:
    """Return the parameters of :attr:`Statements.insert` for ``jobs`` (column arrays)."""
    rows = [_job_values(job) for job in jobs]
    return [list(column) for column in zip(*rows, strict=True)] + [channel]


def _job_values(job: Job) -> tuple[Any, ...]:
    return (
        job.id,
        job.handler,
        job.queue,
        job.priority,
        job.state.value,
        job.attempts,
        job.max_attempts,
        job.run_at,
        job.created_at,
        job.started_at,
        job.finished_at,
        job.worker_id,
        job.lease_expires_at,
        job.claim_token,
        job.cancel_requested,
        dump_errors(job),
        orjson.dumps(dict(job.headers)).decode(),
        orjson.dumps(job.payload).decode(),
        job.run_alone,
        None if job.result is None else orjson.dumps(job.result).decode(),
        None if job.progress is None else orjson.dumps(progress_to_dict(job.progress)).decode(),
        job.version,
        orjson.dumps([dict(f) for f in job.followups]).decode(),
        job.unique_key,
        job.unique_until,
        job.limited,
        job.concurrency_key,
    )


def update_params(job: Job, channel: str) -> dict[str, Any]:
    """Return the parameters of :attr:`Statements.update` for ``job``."""
    return {
        **dict(zip(COLUMN_NAMES, _job_values(job), strict=True)),
        "channel": channel,
    }


def dump_errors(job: Job) -> str:
    """Return the JSON text of a job's error history."""
    return orjson.dumps(
        [
            {"type": e.type, "message": e.message, "traceback": e.traceback}
            | {"attempt": e.attempt, "at": e.at}
            for e in job.errors
        ]
    ).decode()


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def row_to_job(row: Sequence[Any]) -> Job:
    """Build a :class:`Job` from a row selected with :data:`COLUMNS`."""
    errors = tuple(
        JobError(
            type=e["type"],
            message=e["message"],
            traceback=e["traceback"],
            attempt=e["attempt"],
            at=datetime.fromisoformat(e["at"]).astimezone(UTC),
        )
        for e in orjson.loads(row[15])
    )
    return Job(
        id=row[0],
        handler=row[1],
        queue=row[2],
        priority=row[3],
        state=JobState(row[4]),
        attempts=row[5],
        max_attempts=row[6],
        run_at=_utc(row[7]),
        created_at=_utc(row[8]),
        started_at=_utc(row[9]),
        finished_at=_utc(row[10]),
        worker_id=row[11],
        lease_expires_at=_utc(row[12]),
        claim_token=row[13],
        cancel_requested=row[14],
        errors=errors,
        headers=orjson.loads(row[16]),
        payload=orjson.loads(row[17]),
        run_alone=row[18],
        result=None if row[19] is None else orjson.loads(row[19]),
        progress=None if row[20] is None else progress_from_dict(orjson.loads(row[20])),
        version=row[21],
        followups=tuple(orjson.loads(row[22])),
        unique_key=row[23],
        unique_until=_utc(row[24]),
        limited=row[25],
        concurrency_key=row[26],
    )
