"""What each dashboard page shows, read from the engine a bounded amount at a time."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from backrun.engine import Engine
from backrun.jobs import FINISHED_STATES, Job, JobState, check_job_id

from ._format import chart, pretty_json, trace_id

__all__ = [
    "STATE_ORDER",
    "has_schedules",
    "job_page",
    "jobs_page",
    "overview_page",
    "queues_page",
    "schedules_page",
    "workers_page",
]

STATE_ORDER = (
    JobState.SCHEDULED,
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.DEAD,
    JobState.CANCELLED,
)
CHART_SPAN = timedelta(hours=1)
CHART_BUCKETS = 12
MAX_PAGE = 10_000


def _queue_table(engine: Engine) -> tuple[list[dict[str, Any]], dict[str, int]]:
    now = engine.clock.now()
    counts = engine.counts()
    paused = engine.paused()
    oldest = engine.storage.oldest_due(now=now)
    names = sorted({q for q, _ in counts} | set(paused) | set(oldest))
    totals = dict.fromkeys((s.value for s in STATE_ORDER), 0)
    rows = []
    for name in names:
        by_state = {s.value: counts.get((name, s), 0) for s in STATE_ORDER}
        for state, n in by_state.items():
            totals[state] += n
        rows.append(
            {
                "name": name,
                "counts": by_state,
                "paused": name in paused,
                "oldest_due": oldest.get(name),
                "waiting": by_state["queued"] + by_state["scheduled"],
            }
        )
    return rows, totals


def overview_page(engine: Engine) -> dict[str, Any]:
    """Jobs by queue and state, queue lag, the last hour's finishes, what runs now."""
    now = engine.clock.now()
    queues, totals = _queue_table(engine)
    since = now - CHART_SPAN
    finishes = engine.storage.finish_counts(since=since, until=now, buckets=CHART_BUCKETS)
    return {
        "now": now,
        "queues": queues,
        "totals": totals,
        "chart": chart(finishes, since=since, span=CHART_SPAN, buckets=CHART_BUCKETS),
        "running": engine.storage.find_page(state=JobState.RUNNING, limit=10),
        "workers": engine.workers(),
    }


def _page_number(text: str | None) -> int:
    try:
        page = int(text or 1)
    except ValueError:
        return 1
    return min(max(page, 1), MAX_PAGE)


def jobs_page(engine: Engine, query: Mapping[str, str], *, page_size: int) -> dict[str, Any]:
    """One page of jobs, newest first, filtered by state, queue and handler.

    Raises:
        ValueError: a filter is malformed (an unknown state).
    """
    state_text = query.get("state") or None
    state = JobState(state_text) if state_text else None
    queue = query.get("queue") or None
    handler = query.get("handler") or None
    page = _page_number(query.get("page"))
    found = engine.storage.find_page(
        state=state,
        queue=queue,
        handler=handler,
        offset=(page - 1) * page_size,
        limit=page_size + 1,
    )
    counts = engine.counts()
    total: int | None = None
    if handler is None:
        total = sum(
            n
            for (q, s), n in counts.items()
            if (state is None or s is state) and (queue is None or q == queue)
        )
    return {
        "now": engine.clock.now(),
        "jobs": found[:page_size],
        "page": page,
        "has_next": len(found) > page_size,
        "total": total,
        "filters": {"state": state_text or "", "queue": queue or "", "handler": handler or ""},
        "states": [s.value for s in STATE_ORDER],
        "queue_names": sorted({q for q, _ in counts}),
    }


def job_page(engine: Engine, job_id: str) -> dict[str, Any] | None:
    """Everything about one job; ``None`` when there is no such job (or the id is malformed)."""
    try:
        job = engine.get(check_job_id(job_id))
    except ValueError:
        return None
    if job is None:
        return None
    return {
        "now": engine.clock.now(),
        "job": job,
        "payload": pretty_json(job.payload),
        "headers": dict(job.headers),
        "trace_id": trace_id(job.headers),
        "errors": list(reversed(job.errors)),
        "result": None if job.result is None else pretty_json(job.result),
        "progress": _progress_text(job),
        "can_retry": job.state in (JobState.DEAD, JobState.CANCELLED),
        "can_cancel": job.state in (JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING)
        and not job.cancel_requested,
        "finished": job.state in FINISHED_STATES,
    }


def _progress_text(job: Job) -> str | None:
    if job.progress is None:
        return None
    done, total, message = job.progress
    text = f"{done:g}" if total is None else f"{done:g} of {total:g}"
    return text if message is None else f"{text} · {message}"


def workers_page(engine: Engine) -> dict[str, Any]:
    """The live workers of every process on the store."""
    return {"now": engine.clock.now(), "workers": engine.workers()}


def queues_page(engine: Engine) -> dict[str, Any]:
    """Every known queue: counts, lag, paused or not."""
    queues, totals = _queue_table(engine)
    return {"now": engine.clock.now(), "queues": queues, "totals": totals}


_SCHEDULE_FIELDS = ("name", "handler", "spec", "tz", "queue", "next_run_at", "last_tick_at")


def has_schedules(engine: Engine) -> bool:
    """True when the engine declares periodic schedules (no store read)."""
    return bool(engine.schedule_list())


def schedules_page(engine: Engine) -> dict[str, Any]:
    """The periodic schedules, with their next and last ticks."""
    records = engine.schedules()
    rows = [{f: getattr(r, f, None) for f in _SCHEDULE_FIELDS} for r in records]
    return {"now": engine.clock.now(), "schedules": rows}
