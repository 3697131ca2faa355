"""SQL for the PostgreSQL store: versioned migrations, statements, row conversion.

Statements are plain strings with ``%s``/``%(name)s`` placeholders, so the
transactional-enqueue insert also runs on a caller's own DB-API connection.
The schema name is checked against a strict pattern and double-quoted before
it is spliced into any statement; everything else travels as a parameter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from backrun.jobs import Job, JobError, JobState
from backrun.serialization import progress_from_dict, progress_to_dict

__all__ = [
    "COLUMNS",
    "MIGRATIONS",
    "Statements",
    "check_schema",
    "insert_params",
    "row_to_job",
]

_SCHEMA_PATTERN = re.compile(r"\A[a-z_][a-z0-9_]{0,62}\Z")

READY = "('scheduled', 'queued')"
FINISHED = "('succeeded', 'dead', 'cancelled')"

# One entry per schema version; never edit a released entry, append a new one.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        f"""
CREATE TABLE {{schema}}.jobs (
    id text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{{32}}$'),
    handler text NOT NULL,
    queue text NOT NULL,
    priority integer NOT NULL,
    state text NOT NULL CHECK (state IN {READY[:-1]}, 'running', {FINISHED[1:]}),
    attempts integer NOT NULL,
    max_attempts integer NOT NULL,
    run_at timestamptz,
    created_at timestamptz,
    started_at timestamptz,
    finished_at timestamptz,
    worker_id text,
    lease_expires_at timestamptz,
    claim_token text,
    cancel_requested boolean NOT NULL DEFAULT false,
    errors json NOT NULL DEFAULT '[]',
    headers json NOT NULL DEFAULT '{{}}',
    payload json NOT NULL,
    renewed_at timestamptz
);
CREATE INDEX jobs_ready_by_queue ON {{schema}}.jobs (queue, priority DESC, run_at, id)
    WHERE state IN {READY};
CREATE INDEX jobs_ready ON {{schema}}.jobs (priority DESC, run_at, id)
    WHERE state IN {READY};
CREATE INDEX jobs_running ON {{schema}}.jobs (worker_id) WHERE state = 'running';
CREATE INDEX jobs_finished ON {{schema}}.jobs (finished_at) WHERE state IN {FINISHED};
CREATE TABLE {{schema}}.workers (
    id text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    ttl interval NOT NULL
);
""",
    ),
    (2, "ALTER TABLE {schema}.jobs ADD COLUMN run_alone boolean NOT NULL DEFAULT false;"),
    # Version 3 (2 is the run_alone column): liveness by database session, and
    # finished-job counts kept by triggers so counts() never scans finished rows.
    (
        3,
        f"""
ALTER TABLE {{schema}}.workers ADD COLUMN session_key bigint,
    ADD COLUMN session_lost_at timestamptz;
CREATE TABLE {{schema}}.job_counts (queue text NOT NULL, state text NOT NULL, n bigint NOT NULL);
CREATE FUNCTION {{schema}}.jobs_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state IN {FINISHED} THEN
        INSERT INTO {{schema}}.job_counts VALUES (OLD.queue, OLD.state, -1);
    END IF;
    IF NEW.state IN {FINISHED} THEN
        INSERT INTO {{schema}}.job_counts VALUES (NEW.queue, NEW.state, 1);
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION {{schema}}.jobs_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {{schema}}.job_counts SELECT queue, state, count(*) FROM new_rows
        WHERE state IN {FINISHED} GROUP BY queue, state;
    RETURN NULL;
END $$;
CREATE FUNCTION {{schema}}.jobs_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {{schema}}.job_counts SELECT queue, state, -count(*) FROM old_rows
        WHERE state IN {FINISHED} GROUP BY queue, state;
    RETURN NULL;
END $$;
CREATE FUNCTION {{schema}}.jobs_count_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {{schema}}.job_counts;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_count_update AFTER UPDATE OF state, queue ON {{schema}}.jobs FOR EACH ROW
    WHEN ((OLD.state IN {FINISHED} OR NEW.state IN {FINISHED})
        AND (OLD.state, OLD.queue) IS DISTINCT FROM (NEW.state, NEW.queue))
    EXECUTE FUNCTION {{schema}}.jobs_count_update();
CREATE TRIGGER jobs_count_insert AFTER INSERT ON {{schema}}.jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION {{schema}}.jobs_count_insert();
CREATE TRIGGER jobs_count_delete AFTER DELETE ON {{schema}}.jobs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION {{schema}}.jobs_count_delete();
CREATE TRIGGER jobs_count_truncate AFTER TRUNCATE ON {{schema}}.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.jobs_count_truncate();
INSERT INTO {{schema}}.job_counts SELECT queue, state, count(*) FROM {{schema}}.jobs
    WHERE state IN {FINISHED} GROUP BY queue, state;
""",
    ),
    # Version 4: live workers' records
    # and paused queues, for the operators' dashboard and CLI.
    (
        4,
        """
ALTER TABLE {schema}.workers ADD COLUMN info json, ADD COLUMN info_expires_at timestamptz;
CREATE TABLE {schema}.paused_queues (
    queue text PRIMARY KEY,
    paused_at timestamptz NOT NULL
);
""",
    ),
    # Version 5: stored results, progress, payload versions and then= follow-ups.
    (
        5,
        """
ALTER TABLE {schema}.jobs ADD COLUMN result json, ADD COLUMN progress json,
    ADD COLUMN version integer NOT NULL DEFAULT 1,
    ADD COLUMN followups json NOT NULL DEFAULT '[]';
""",
    ),
    # Version 6: unique jobs (a key table written under an advisory lock per
    # key) and handler limits (running limited jobs per group; recent starts).
    (
        6,
        """
ALTER TABLE {schema}.jobs ADD COLUMN unique_key text, ADD COLUMN unique_until timestamptz,
    ADD COLUMN limited boolean NOT NULL DEFAULT false, ADD COLUMN concurrency_key text;
CREATE INDEX jobs_running_limited ON {schema}.jobs (handler, concurrency_key)
    WHERE state = 'running' AND limited;
CREATE TABLE {schema}.unique_keys (
    handler text NOT NULL,
    key text NOT NULL,
    job_id text NOT NULL,
    PRIMARY KEY (handler, key)
);
CREATE TABLE {schema}.limit_starts (handler text NOT NULL, started_at timestamptz NOT NULL);
CREATE INDEX limit_starts_by_handler ON {schema}.limit_starts (handler, started_at);
""",
    ),
)

_COLUMN_NAMES = (
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
_ARRAY_TYPES = {
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
    **{c: "timestamptz[]" for c in _COLUMN_NAMES if c.endswith("_at")},
}


def _select_list(alias: str) -> str:
    return ", ".join(
        f"{alias}{c}::text" if c in _JSON_COLUMNS else f"{alias}{c}" for c in _COLUMN_NAMES
    )


COLUMNS = _select_list("")


def check_schema(schema: str) -> str:
    """Return ``schema`` double-quoted, if it is a plain lowercase identifier.

    Raises:
        ValueError: the name is not ``[a-z_][a-z0-9_]*`` of at most 63 characters.
    """
    if _SCHEMA_PATTERN.match(schema) is None:
        raise ValueError(f"schema name must match [a-z_][a-z0-9_]{{0,62}}, not {schema!r}")
    return f'"{schema}"'


class Statements:
    """Every statement the store runs, bound to one schema and notification channel."""

    def __init__(self, schema: str) -> None:
        q = check_schema(schema)
        self.channel = f"backrun_{schema}"
        jobs = f"{q}.jobs"
        workers = f"{q}.workers"
        j = _select_list("j.")
        self.migrations = tuple((v, sql.replace("{schema}", q)) for v, sql in MIGRATIONS)
        self.create_schema = f"CREATE SCHEMA IF NOT EXISTS {q}"
        self.create_versions = (
            f"CREATE TABLE IF NOT EXISTS {q}.schema_versions "
            "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        self.applied_versions = f"SELECT version FROM {q}.schema_versions"
        self.record_version = f"INSERT INTO {q}.schema_versions (version) VALUES (%s)"
        arrays = ", ".join(f"%s::{_ARRAY_TYPES.get(c, 'text[]')}" for c in _COLUMN_NAMES)
        self.insert = (
            f"WITH ins AS (INSERT INTO {jobs} ({', '.join(_COLUMN_NAMES)}) "
            f"SELECT * FROM unnest({arrays}) RETURNING queue) "
            "SELECT pg_notify(%s, q) FROM (SELECT DISTINCT queue AS q FROM ins) AS d"
        )
        # Follow-ups land with their parent's success; an id taken already is skipped.
        self.insert_missing = self.insert.replace(
            " RETURNING queue)", " ON CONFLICT (id) DO NOTHING RETURNING queue)"
        )
        self.record_progress = (
            f"UPDATE {jobs} SET progress = %s::json "
            "WHERE id = %s AND state = 'running' AND claim_token = %s"
        )
        self.get = f"SELECT {COLUMNS} FROM {jobs} WHERE id = %s"
        self.claim_head = (
            f"WITH picked AS (SELECT id FROM {jobs} WHERE state IN {READY} AND run_at <= %(now)s"
            f" AND queue NOT IN (SELECT queue FROM {q}.paused_queues)"
        )
        self.claim_tail = (
            " ORDER BY priority DESC, run_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            f"UPDATE {jobs} AS j SET state = 'running', attempts = j.attempts + 1, "
            "worker_id = %(worker)s, started_at = %(now)s, lease_expires_at = %(until)s, "
            "claim_token = %(batch)s || left(replace(gen_random_uuid()::text, '-', ''), 16), "
            "renewed_at = now() "
            f"FROM picked WHERE j.id = picked.id RETURNING {j}"
        )
        self.update = (
            f"WITH u AS (UPDATE {jobs} SET handler = %(handler)s, queue = %(queue)s, "
            "priority = %(priority)s, state = %(state)s, attempts = %(attempts)s, "
            "max_attempts = %(max_attempts)s, run_at = %(run_at)s, created_at = %(created_at)s, "
            "started_at = %(started_at)s, finished_at = %(finished_at)s, "
            "worker_id = %(worker_id)s, lease_expires_at = %(lease_expires_at)s, "
            "cancel_requested = CASE WHEN %(state)s = 'running' "
            "THEN cancel_requested OR %(cancel_requested)s ELSE %(cancel_requested)s END, "
            "errors = %(errors)s::json, headers = %(headers)s::json, "
            "payload = %(payload)s::json, run_alone = %(run_alone)s, "
            "result = %(result)s::json, progress = %(progress)s::json, "
            "version = %(version)s, followups = %(followups)s::json, renewed_at = now() "
            "WHERE id = %(id)s AND state = 'running' AND claim_token = %(claim_token)s "
            "RETURNING queue, state, limited) "
            f"SELECT (SELECT pg_notify(%(channel)s, u.queue) WHERE u.state IN {READY}), "
            # A limited job's slot frees: wake the workers its limit holds back.
            "(SELECT pg_notify(%(channel)s, 'limit') WHERE u.limited AND u.state <> 'running') "
            "FROM u"
        )
        self.heartbeat = (
            f"WITH w AS (INSERT INTO {workers} (id, heartbeat_at, expires_at, ttl) "
            "VALUES (%(worker)s, now(), now() + %(ttl)s, %(ttl)s) ON CONFLICT (id) DO UPDATE "
            "SET heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at, "
            "ttl = excluded.ttl) "
            f"UPDATE {jobs} AS j SET lease_expires_at = %(until)s, renewed_at = now() "
            "FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS h(id, token) "
            "WHERE j.id = h.id AND j.state = 'running' AND j.claim_token = h.token "
            "RETURNING j.id, j.cancel_requested"
        )
        self.unregister = f"DELETE FROM {workers} WHERE id = %s"
        # A cancel of a running job is announced, so its worker (in any
        # process) learns of it at once instead of at its next heartbeat.
        self.cancel = (
            f"WITH u AS (UPDATE {jobs} SET "
            f"state = CASE WHEN state IN {READY} THEN 'cancelled' ELSE state END, "
            f"finished_at = CASE WHEN state IN {READY} THEN %(now)s ELSE finished_at END, "
            "cancel_requested = cancel_requested OR state = 'running' "
            f"WHERE id = %(id)s RETURNING {COLUMNS}) "
            "SELECT u.*, (SELECT pg_notify(%(channel)s, 'cancel') WHERE u.state = 'running') FROM u"
        )
        self.cancel_requests = (
            f"SELECT id FROM {jobs} WHERE id = ANY(%s) AND state = 'running' AND cancel_requested"
        )
        self.requeue = (
            f"WITH u AS (UPDATE {jobs} SET state = 'queued', run_at = %(now)s, "
            "attempts = CASE WHEN state = 'scheduled' THEN attempts ELSE 0 END, "
            "finished_at = CASE WHEN state = 'scheduled' THEN finished_at END, "
            "cancel_requested = CASE WHEN state = 'scheduled' THEN cancel_requested "
            "ELSE false END "
            "WHERE id = %(id)s AND state IN ('dead', 'cancelled', 'scheduled') "
            f"RETURNING {COLUMNS}) SELECT u.*, pg_notify(%(channel)s, u.queue) FROM u"
        )
        self.claimed_in_batch = (
            f"SELECT {COLUMNS} FROM {jobs} WHERE state = 'running' AND worker_id = %s "
            "AND left(claim_token, 16) = %s"
        )
        self.count_ids = f"SELECT count(*) FROM {jobs} WHERE id = ANY(%s)"
        self.state_of = f"SELECT state FROM {jobs} WHERE id = %s"
        self.find = f"SELECT {COLUMNS} FROM {jobs}"
        # Waiting and running rows are counted through their partial indexes;
        # finished ones are summed from the trigger-kept job_counts deltas.
        self.counts = (
            f"SELECT queue, state, count(*) FROM {jobs} WHERE state IN {READY} "
            "GROUP BY queue, state "
            f"UNION ALL SELECT queue, 'running', count(*) FROM {jobs} WHERE state = 'running' "
            "GROUP BY queue "
            f"UNION ALL SELECT queue, state, sum(n) FROM {q}.job_counts GROUP BY queue, state "
            "HAVING sum(n) <> 0"
        )
        self.compact_counts = (
            f"WITH gone AS (DELETE FROM {q}.job_counts RETURNING queue, state, n) "
            f"INSERT INTO {q}.job_counts SELECT queue, state, sum(n) FROM gone "
            "GROUP BY queue, state HAVING sum(n) <> 0"
        )
        self.next_run_at = (
            f"SELECT min(run_at) FROM {jobs} WHERE state IN {READY} "
            f"AND queue NOT IN (SELECT queue FROM {q}.paused_queues)"
        )
        self.oldest_due = (
            f"SELECT queue, min(run_at) FROM {jobs} "
            f"WHERE state IN {READY} AND run_at <= %s GROUP BY queue"
        )
        # A worker with a session_key holds that advisory lock on its own
        # connection while it lives. A scan marks a worker whose lock is free
        # (session_lost_at) and clears the mark of one whose lock is held; its
        # jobs are orphans once the lock is still free a grace period after the
        # mark (a live worker re-takes a lock lost with its connection sooner).
        held = (
            "held AS (SELECT (l.classid::bigint << 32) | l.objid::bigint AS key "
            "FROM pg_locks AS l WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
        )
        self.orphans = (
            f"WITH {held}, mark AS (UPDATE {workers} AS m SET session_lost_at = "
            "CASE WHEN m.session_key IN (SELECT key FROM held) THEN NULL "
            "ELSE coalesce(m.session_lost_at, now()) END "
            "WHERE m.session_key IS NOT NULL "
            "AND (m.session_key IN (SELECT key FROM held)) = (m.session_lost_at IS NOT NULL)) "
            f"SELECT {j} FROM {jobs} AS j LEFT JOIN {workers} AS w ON w.id = j.worker_id "
            "WHERE j.state = 'running' AND (w.id IS NULL OR w.expires_at < now() "
            "OR j.renewed_at + w.ttl < w.heartbeat_at "
            "OR (w.session_key IS NOT NULL AND w.session_lost_at < now() - %s "
            "AND w.session_key NOT IN (SELECT key FROM held)))"
        )
        self.session_lock = "SELECT pg_try_advisory_lock(%s)"
        self.session_unlock = "SELECT pg_advisory_unlock(%s)"
        self.session_held = (
            f"UPDATE {workers} SET session_key = %s, session_lost_at = NULL WHERE id = %s"
        )
        self.session_forget = f"UPDATE {workers} SET session_key = NULL WHERE id = %s"
        self.purge_batch = (
            f"DELETE FROM {jobs} WHERE id IN (SELECT id FROM {jobs} "
            f"WHERE state IN {FINISHED} AND state = ANY(%s) AND finished_at < %s "
            "LIMIT %s FOR UPDATE SKIP LOCKED)"
        )
        self.forget_workers = f"DELETE FROM {workers} WHERE expires_at < now() - %s"


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
        **dict(zip(_COLUMN_NAMES, _job_values(job), strict=True)),
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
