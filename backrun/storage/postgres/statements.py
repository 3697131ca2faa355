"""Every SQL statement the PostgreSQL store runs, bound to one schema.

Statements are plain strings with ``%s``/``%(name)s`` placeholders, so the
transactional-enqueue insert also runs on a caller's own DB-API connection.
The schema name is checked (:func:`~.schema.check_schema`) and double-quoted
before it is spliced in; everything else travels as a parameter. Unique keys
and handler limits keep their statements next to their logic (``unique``,
``limits``).
"""

from __future__ import annotations

from .rows import ARRAY_TYPES, COLUMN_NAMES, COLUMNS, select_list
from .schema import FINISHED, READY, check_schema

__all__ = ["Statements"]


class Statements:
    """Every statement the store runs, bound to one schema and notification channel."""

    def __init__(self, schema: str) -> None:
        q = check_schema(schema)
        self.schema = schema
        self.channel = f"backrun_{schema}"
        jobs = f"{q}.jobs"
        workers = f"{q}.workers"
        j = select_list("j.")
        arrays = ", ".join(f"%s::{ARRAY_TYPES.get(c, 'text[]')}" for c in COLUMN_NAMES)
        self.insert = (
            f"WITH ins AS (INSERT INTO {jobs} ({', '.join(COLUMN_NAMES)}) "
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
        # The claim as one autocommit statement that commits without waiting for
        # the disk: set_config(..., true) lasts until this statement's implicit
        # transaction ends, after its commit record is written. One round trip
        # instead of BEGIN, SET LOCAL, the claim and COMMIT.
        self.claim_tail_async = self.claim_tail.replace(
            "FROM picked WHERE j.id = picked.id",
            "FROM picked WHERE j.id = picked.id "
            "AND set_config('synchronous_commit', 'off', true) IS NOT NULL",
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

        # Operator state: worker records ride on the workers row; paused queues.
        self.publish_worker = (
            f"UPDATE {workers} SET info = %(info)s::json, info_expires_at = now() + %(ttl)s "
            "WHERE id = %(id)s"
        )
        self.live_workers = (
            f"SELECT info::text FROM {workers} WHERE info IS NOT NULL "
            "AND expires_at >= now() AND info_expires_at >= now() ORDER BY id"
        )
        self.pause = (
            f"INSERT INTO {q}.paused_queues (queue, paused_at) VALUES (%s, %s) "
            "ON CONFLICT (queue) DO NOTHING"
        )
        # Resuming notifies the enqueue channel, so idle workers elsewhere look at once.
        self.resume = (
            f"WITH d AS (DELETE FROM {q}.paused_queues WHERE queue = %s RETURNING queue) "
            "SELECT pg_notify(%s, d.queue) FROM d"
        )
        self.paused = f"SELECT queue FROM {q}.paused_queues ORDER BY queue"
        self.finish_counts = (
            "SELECT state, least(floor(extract(epoch FROM finished_at - %(since)s) "
            "/ %(width)s)::int, %(last)s) AS bucket, count(*) "
            f"FROM {jobs} WHERE state IN {FINISHED} "
            "AND finished_at >= %(since)s AND finished_at < %(until)s GROUP BY 1, 2"
        )
