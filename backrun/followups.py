"""Follow-up jobs: ``enqueue(..., then=[Next(...)])``, stored with the parent.

A follow-up is validated when its parent is enqueued (its payload, queue,
priority and delay), and stored in the parent's record with the id it will
have. The store enqueues it in the same atomic step that records the
parent's success (see :meth:`backrun.storage.base.Storage.update`), and only
then: a parent that goes DEAD or CANCELLED enqueues nothing. Because the id is
fixed at the parent's enqueue, a store that must create the follow-ups before
it publishes the success (the JSON store) can do it again after a crash
without creating them twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from .jobs import Job, JobState, check_job_id
from .retries import RetryPolicy

__all__ = ["Next", "build_followups", "followup_jobs"]

_OPTIONS = frozenset({"delay", "queue", "priority", "headers"})


class Next:
    """A job to enqueue once its parent succeeds: ``then=[Next(Notify, {...})]``.

    Args:
        handler: as for :meth:`backrun.Engine.enqueue`: a registered Handler
            class, function, or handler name.
        payload: the follow-up's payload (validated at the parent's enqueue).
        **options: ``delay`` (counted from the parent's success), ``queue``,
            ``priority`` and ``headers``, as for ``enqueue``.

    Raises:
        TypeError: an option ``enqueue`` does not take for follow-ups.
    """

    __slots__ = ("handler", "options", "payload")

    def __init__(self, handler: object, payload: object = None, **options: Any) -> None:
        unknown = options.keys() - _OPTIONS
        if unknown:
            raise TypeError(f"Next() takes the options {sorted(_OPTIONS)}, not {sorted(unknown)}")
        self.handler = handler
        self.payload = payload
        self.options = options

    def __repr__(self) -> str:
        name = getattr(self.handler, "__qualname__", self.handler)
        return f"Next({name!r}, {self.payload!r}, **{self.options!r})"


def build_followups(then: Iterable[Next], build: Callable[..., Job]) -> tuple[dict[str, Any], ...]:
    """Validate ``then=`` and return the follow-ups' stored form.

    ``build`` is the engine's job builder (every enqueue check applies), called
    with ``(handler, payload, delay=, queue=, priority=, headers=)``.

    Raises:
        TypeError: an item is not a :class:`Next`.
        As :meth:`backrun.Engine.enqueue` for a bad payload or option.
    """
    stored: list[dict[str, Any]] = []
    for item in then:
        if not isinstance(item, Next):
            raise TypeError(f"then= takes backrun.Next(...) items, not {item!r}")
        delay = item.options.get("delay")
        job = build(
            item.handler,
            item.payload,
            delay=delay,
            queue=item.options.get("queue"),
            priority=item.options.get("priority", 0),
            headers=item.options.get("headers"),
        )
        seconds = (
            0.0
            if job.run_at is None or job.created_at is None
            else ((job.run_at - job.created_at).total_seconds())
        )
        stored.append(
            {
                "id": job.id,
                "handler": job.handler,
                "payload": job.payload,
                "queue": job.queue,
                "priority": job.priority,
                "delay": seconds,
                "max_attempts": job.max_attempts,
                "headers": dict(job.headers),
                "version": job.version,
                # A limited handler's follow-up is held by its limits like any job.
                **(
                    {"limited": True, "concurrency_key": job.concurrency_key} if job.limited else {}
                ),
            }
        )
    return tuple(stored)


def followup_jobs(parent: Job, now: datetime) -> list[Job]:
    """The jobs a succeeding ``parent`` enqueues: its follow-ups, due ``delay`` after ``now``.

    Stores call this in the step that records the success; ids are the ones
    fixed at the parent's enqueue.

    Raises:
        ValueError: a stored follow-up is malformed.
    """
    jobs: list[Job] = []
    for item in parent.followups:
        jobs.append(_job_of(item, now))
    return jobs


def _job_of(item: Mapping[str, Any], now: datetime) -> Job:
    try:
        delay = timedelta(seconds=float(item.get("delay", 0.0)))
        run_at = now + delay
        return Job(
            id=check_job_id(item["id"]),
            handler=str(item["handler"]),
            payload=dict(item["payload"]),
            queue=str(item["queue"]),
            priority=int(item["priority"]),
            state=JobState.SCHEDULED if run_at > now else JobState.QUEUED,
            max_attempts=int(item.get("max_attempts", RetryPolicy().max_attempts)),
            run_at=run_at,
            created_at=now,
            headers={str(k): str(v) for k, v in dict(item.get("headers") or {}).items()},
            version=int(item.get("version", 1)),
            limited=bool(item.get("limited", False)),
            concurrency_key=(
                None if item.get("concurrency_key") is None else str(item["concurrency_key"])
            ),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed follow-up in a job record: {exc!r}") from None


def followup_ids(parent: Job) -> Sequence[str]:
    """The ids ``parent``'s follow-ups have (fixed at its enqueue)."""
    return [str(item["id"]) for item in parent.followups]
