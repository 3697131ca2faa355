"""The PostgreSQL store's schema: versioned migrations and the part that applies them.

The schema name is checked against a strict pattern and double-quoted before
it is spliced into any statement; everything else travels as a parameter.
"""

from __future__ import annotations

import logging
import re
from enum import IntEnum, StrEnum

from backrun.limits import group_int

from .pool import Connections

__all__ = [
    "FINISHED",
    "MIGRATIONS",
    "READY",
    "AdvisoryLock",
    "LockKind",
    "Schema",
    "check_schema",
    "group_lock",
]

log = logging.getLogger("backrun.storage.postgres")

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


class AdvisoryLock(IntEnum):
    """Fixed advisory-lock keys the store takes for a transaction."""

    MIGRATE = 0x6261636B72756E  # "backrun": serialises concurrent migrate() calls
    COMPACT_COUNTS = 0x6261636B72756E01  # one compaction of job_counts at a time


class LockKind(StrEnum):
    """What a per-name advisory lock guards (part of the hashed key)."""

    UNIQUE = "unique"  # one unique key of a handler: enqueues of that key
    LIMITS = "limits"  # one limited handler: claims deciding its slots


def group_lock(schema: str, kind: LockKind, handler: str, key: str | None) -> int:
    """The advisory lock number of one unique key or limited handler of ``schema``."""
    return group_int(f"{schema}\x00{kind.value}", handler, key)


def check_schema(schema: str) -> str:
    """Return ``schema`` double-quoted, if it is a plain lowercase identifier.

    Raises:
        ValueError: the name is not ``[a-z_][a-z0-9_]*`` of at most 63 characters.
    """
    if _SCHEMA_PATTERN.match(schema) is None:
        raise ValueError(f"schema name must match [a-z_][a-z0-9_]{{0,62}}, not {schema!r}")
    return f'"{schema}"'


class Schema:
    """Creates and upgrades one schema's tables."""

    def __init__(self, db: Connections, schema: str) -> None:
        self.name = schema
        self._db = db
        q = check_schema(schema)
        self.migrations = tuple((v, sql.replace("{schema}", q)) for v, sql in MIGRATIONS)
        self.create_schema = f"CREATE SCHEMA IF NOT EXISTS {q}"
        self.create_versions = (
            f"CREATE TABLE IF NOT EXISTS {q}.schema_versions "
            "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        self.applied_versions = f"SELECT version FROM {q}.schema_versions"
        self.record_version = f"INSERT INTO {q}.schema_versions (version) VALUES (%s)"

    def migrate(self) -> list[int]:
        """Apply the migrations not applied yet, under a lock; return their versions."""
        applied: list[int] = []
        with self._db.connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (int(AdvisoryLock.MIGRATE),))
            conn.execute(self.create_schema)
            conn.execute(self.create_versions)
            done = {row[0] for row in conn.execute(self.applied_versions)}
            for version, statement in self.migrations:
                if version in done:
                    continue
                conn.execute(statement)
                conn.execute(self.record_version, (version,))
                applied.append(version)
        if applied:
            log.info("schema %s migrated to version %d", self.name, applied[-1])
        return applied
