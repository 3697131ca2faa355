"""``backrun jobs ...``, ``backrun stats`` and ``backrun db init``: inspect and steer a store."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections import defaultdict
from datetime import datetime
from typing import IO, Any

from backrun.engine import Engine
from backrun.errors import JobNotFound, StorageError
from backrun.jobs import FINISHED_STATES, Job, JobState, check_job_id
from backrun.serialization import job_to_dict

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STORE,
    EXIT_USAGE,
    CliError,
    Progress,
    format_age,
    parse_duration,
    table,
)

__all__ = [
    "cmd_cancel",
    "cmd_db_init",
    "cmd_list",
    "cmd_purge",
    "cmd_retry",
    "cmd_show",
    "cmd_stats",
    "parse_state",
]

_STATE_ORDER = list(JobState)


def parse_state(text: str) -> JobState:
    """``dead`` -> ``JobState.DEAD`` (argparse type)."""
    try:
        return JobState(text.strip().lower())
    except ValueError:
        names = ", ".join(s.value for s in JobState)
        raise argparse.ArgumentTypeError(f"unknown state {text!r} (one of {names})") from None


def _job_id(text: str) -> str:
    try:
        return check_job_id(text)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _get(engine: Engine, job_id: str) -> Job:
    job = engine.get(_job_id(job_id))
    if job is None:
        raise CliError(f"no job {job_id} in this store", EXIT_FAILED)
    return job


def _dump(data: Any, out: IO[str]) -> None:
    out.write(json.dumps(data, indent=2, default=str) + "\n")


def _attempts(job: Job) -> str:
    return f"{job.attempts}/{job.max_attempts}"


def _short_error(job: Job, width: int = 50) -> str:
    error = job.last_error
    if error is None:
        return ""
    text = f"{error.type}: {error.message}".replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def _when(job: Job) -> str:
    moment = job.finished_at if job.finished else job.run_at
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"


def _matching(engine: Engine, state: JobState | None, queue: str | None) -> int:
    return sum(
        n
        for (q, s), n in engine.counts().items()
        if (state is None or s is state) and (queue is None or q == queue)
    )


def cmd_list(engine: Engine, ns: argparse.Namespace, out: IO[str]) -> int:
    """``backrun jobs list``; says so on stderr when ``--limit`` cut the list."""
    jobs = engine.jobs(state=ns.state, queue=ns.queue, limit=ns.limit)
    if len(jobs) >= ns.limit:
        total = _matching(engine, ns.state, ns.queue)
        if total > len(jobs):
            sys.stderr.write(
                f"showing {len(jobs)} of {total} jobs (oldest first; use --limit N for more)\n"
            )
    if ns.json:
        _dump([job_to_dict(j) for j in jobs], out)
        return EXIT_OK
    if not jobs:
        out.write("no jobs\n")
        return EXIT_OK
    rows = [["ID", "STATE", "QUEUE", "HANDLER", "ATTEMPTS", "RUN AT / FINISHED (UTC)", "ERROR"]]
    rows.extend(
        [j.id, j.state.value, j.queue, j.handler, _attempts(j), _when(j), _short_error(j)]
        for j in jobs
    )
    table(rows, out)
    return EXIT_OK


def _time(value: datetime | None) -> str:
    return value.isoformat() if value is not None else "-"


def cmd_show(engine: Engine, ns: argparse.Namespace, out: IO[str]) -> int:
    """``backrun jobs show ID``: the record and every attempt's error."""
    job = _get(engine, ns.id)
    if ns.json:
        _dump(job_to_dict(job), out)
        return EXIT_OK
    fields = [
        ("id", job.id),
        ("handler", job.handler),
        ("state", job.state.value),
        ("queue", job.queue),
        ("priority", str(job.priority)),
        ("attempts", _attempts(job)),
        ("created", _time(job.created_at)),
        ("run at", _time(job.run_at)),
        ("started", _time(job.started_at)),
        ("finished", _time(job.finished_at)),
        ("worker", job.worker_id or "-"),
        ("payload", json.dumps(job.payload, default=str)),
    ]
    fields.extend(_result_fields(job))
    if job.cancel_requested and not job.finished:
        fields.append(("cancel", "requested"))
    for key, value in fields:
        out.write(f"{key + ':':<10} {value}\n")
    if not job.errors:
        out.write("errors:    none\n")
        return EXIT_OK
    out.write(f"errors:    {len(job.errors)}\n")
    for error in job.errors:
        out.write(
            f"  attempt {error.attempt} at {_time(error.at)}: {error.type}: {error.message}\n"
        )
        if error.traceback and (ns.tracebacks or error is job.errors[-1]):
            for line in trim_traceback(error.traceback):
                out.write(f"      {line}\n")
    return EXIT_OK


def _result_fields(job: Job) -> list[tuple[str, str]]:
    """The progress, result, payload version and follow-ups lines of ``jobs show``."""
    fields: list[tuple[str, str]] = []
    if job.version != 1:
        fields.append(("version", str(job.version)))
    if job.progress is not None:
        done, total, message = job.progress
        text = f"{done:g}" if total is None else f"{done:g}/{total:g}"
        fields.append(("progress", text if message is None else f"{text} {message}"))
    if job.state is JobState.SUCCEEDED:
        fields.append(("result", json.dumps(job.result, default=str)))
    if job.followups:
        then = ", ".join(f"{f.get('handler')} {f.get('id')}" for f in job.followups)
        fields.append(("then", then))
    return fields


_BACKRUN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+')


def trim_traceback(text: str) -> list[str]:
    """The traceback's lines without the leading frames inside backrun (the worker's own).

    The handler's frames, and anything after them, stay; a note says how
    many frames were left out.
    """
    lines = text.rstrip().splitlines()
    if not lines or not lines[0].startswith("Traceback"):
        return lines
    index, hidden = 1, 0
    while index < len(lines):
        match = _FRAME.match(lines[index])
        if match is None or not _is_backrun(match.group("file")):
            break
        hidden += 1
        index += 1
        while index < len(lines) and lines[index].startswith("    "):
            index += 1  # the frame's source line and any ^^^ markers
    if hidden == 0 or index >= len(lines) or _FRAME.match(lines[index]) is None:
        return lines  # the error was raised inside backrun itself: show it all
    return [lines[0], f"  ({hidden} backrun frame(s) hidden)", *lines[index:]]


def _is_backrun(filename: str) -> bool:
    path = os.path.abspath(filename)
    installed = f"site-packages{os.sep}backrun{os.sep}"
    return path.startswith(_BACKRUN_DIR + os.sep) or installed in filename


def cmd_cancel(engine: Engine, ns: argparse.Namespace, out: IO[str]) -> int:
    """``backrun jobs cancel ID``."""
    job_id = _job_id(ns.id)
    try:
        job = engine.cancel(job_id)
    except JobNotFound:
        raise CliError(f"no job {job_id} in this store", EXIT_FAILED) from None
    if ns.json:
        _dump(job_to_dict(job), out)
    elif job.state is JobState.CANCELLED:
        out.write(f"cancelled {job.id}\n")
    elif job.state is JobState.RUNNING:
        out.write(f"cancel requested for {job.id}: its worker will stop it\n")
    else:
        out.write(f"{job.id} is already {job.state.value}; nothing to cancel\n")
    return EXIT_OK


def cmd_retry(engine: Engine, ns: argparse.Namespace, out: IO[str]) -> int:
    """``backrun jobs retry ID`` or ``--all-dead``."""
    if ns.all_dead:
        if ns.id:
            raise CliError("give a job id or --all-dead, not both", EXIT_USAGE)
        return _retry_all_dead(engine, ns, out)
    if not ns.id:
        raise CliError("give a job id or --all-dead", EXIT_USAGE)
    job_id = _job_id(ns.id)
    try:
        job = engine.retry(job_id)
    except JobNotFound:
        raise CliError(f"no job {job_id} in this store", EXIT_FAILED) from None
    except ValueError as exc:
        raise CliError(f"cannot retry {job_id}: {exc}", EXIT_FAILED) from None
    if ns.json:
        _dump(job_to_dict(job), out)
    else:
        out.write(f"retrying {job.id}: {job.state.value}\n")
    return EXIT_OK


def _retry_all_dead(engine: Engine, ns: argparse.Namespace, out: IO[str]) -> int:
    total = sum(n for (_, state), n in engine.counts().items() if state is JobState.DEAD)
    progress = Progress(total, "retrying dead jobs")
    retried: list[str] = []
    skipped: set[str] = set()
    try:
        while True:
            batch = [j for j in engine.jobs(state=JobState.DEAD, limit=500) if j.id not in skipped]
            if not batch:
                break
            for job in batch:
                try:
                    engine.retry(job.id)
                except (JobNotFound, ValueError):
                    skipped.add(job.id)  # changed under us: someone else handled it
                else:
                    retried.append(job.id)
                progress.advance()
    finally:
        progress.close()
    if ns.json:
        _dump({"retried": retried, "count": len(retried)}, out)
    else:
        out.write(f"retried {len(retried)} dead job(s)\n")
    return EXIT_OK


def cmd_purge(engine: Engine, ns: argparse.Namespace, out: IO[str]) -> int:
    """``backrun jobs purge --state S --older-than 7d``."""
    states = sorted(FINISHED_STATES) if ns.state == "finished" else [parse_state(ns.state)]
    if any(state not in FINISHED_STATES for state in states):
        raise CliError(
            "only finished jobs can be purged: --state succeeded, dead, cancelled or finished",
            EXIT_USAGE,
        )
    try:
        age = parse_duration(ns.older_than)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    before = engine.clock.now() - age
    progress = Progress(len(states), "purging")
    removed: dict[str, int] = {}
    try:
        for state in states:
            removed[state.value] = engine.storage.purge(before=before, states=[state])
            progress.advance()
    finally:
        progress.close()
    count = sum(removed.values())
    if ns.json:
        _dump({"purged": count, "by_state": removed, "before": before.isoformat()}, out)
    else:
        which = " + ".join(s.value for s in states)
        out.write(f"purged {count} {which} job(s) finished before {before:%Y-%m-%d %H:%M:%S}\n")
    return EXIT_OK


def cmd_stats(engine: Engine, ns: argparse.Namespace, out: IO[str]) -> int:
    """``backrun stats``: jobs by queue and state, and the oldest ready job's age."""
    now = engine.clock.now()
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {s.value: 0 for s in _STATE_ORDER})
    for (queue, state), n in engine.counts().items():
        counts[queue][state.value] += n
    oldest = engine.storage.oldest_due(now=now)
    for queue in oldest:
        _ = counts[queue]  # a queue with due jobs shows even if its counts lag
    if ns.json:
        data = {
            queue: {
                **counts[queue],
                "oldest_ready_age_s": (
                    round((now - oldest[queue]).total_seconds(), 3) if queue in oldest else None
                ),
            }
            for queue in sorted(counts)
        }
        _dump({"queues": data, "at": now.isoformat()}, out)
        return EXIT_OK
    if not counts:
        out.write("no jobs\n")
        return EXIT_OK
    header = ["QUEUE", *(s.value.upper() for s in _STATE_ORDER), "OLDEST READY"]
    rows = [header]
    totals = dict.fromkeys((s.value for s in _STATE_ORDER), 0)
    for queue in sorted(counts):
        row = [queue]
        for state in _STATE_ORDER:
            row.append(str(counts[queue][state.value]))
            totals[state.value] += counts[queue][state.value]
        row.append(format_age(now, oldest.get(queue)))
        rows.append(row)
    if len(counts) > 1:
        rows.append(["(all)", *(str(totals[s.value]) for s in _STATE_ORDER), ""])
    table(rows, out)
    return EXIT_OK


def cmd_db_init(ns: argparse.Namespace, out: IO[str]) -> int:
    """``backrun db init --dsn DSN [--schema S]``: create or upgrade the PostgreSQL tables."""
    try:
        from backrun.storage.postgres import PostgresStorage
    except ImportError as exc:
        raise CliError(
            f"PostgreSQL support is not installed: pip install 'backrun[postgres]' ({exc})",
            EXIT_USAGE,
        ) from None
    # The one error line says it all; the pool's retry warnings would bury it.
    for noisy in ("psycopg", "backrun.storage"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    try:
        storage = PostgresStorage(ns.dsn, schema=ns.schema, timeout=ns.timeout)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except Exception as exc:
        raise CliError(f"cannot connect to PostgreSQL: {exc}", EXIT_STORE) from None
    try:
        applied = storage.migrate()
    except StorageError as exc:
        raise CliError(f"store unavailable: {exc}", EXIT_STORE) from None
    except Exception as exc:
        raise CliError(f"migration failed: {type(exc).__name__}: {exc}", EXIT_STORE) from None
    finally:
        storage.close()
    if ns.json:
        _dump({"schema": ns.schema, "applied": applied}, out)
    elif applied:
        out.write(f"schema {ns.schema!r}: applied migration(s) {', '.join(map(str, applied))}\n")
    else:
        out.write(f"schema {ns.schema!r}: already up to date\n")
    return EXIT_OK
