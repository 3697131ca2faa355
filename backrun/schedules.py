"""Periodic jobs: the Schedule record, tick arithmetic, and tick identity.

A schedule is code, not data: it lives in the engine that declared it and
nowhere else, so removing it from the code stops its ticks. Every worker
process computes the same ticks from the same declaration, and each tick has
one job id derived from the schedule's name and the tick time; the store
accepts that id once, so a tick becomes exactly one job however many
processes try (see :mod:`backrun.scheduler` for when they try).

Cron fields are read by cronsim, in the schedule's zone, Debian-cron style on
DST transition days: a time the clock skips runs at the first minute after the
gap; a time the clock repeats runs once, at its first occurrence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .enqueueing import check_queue
from .handlers import HandlerSpec
from .serialization import check_payload

__all__ = [
    "MISFIRE_POLICIES",
    "SCHEDULE_HEADER",
    "SCHEDULE_KEYS",
    "TICK_HEADER",
    "Schedule",
    "apply_schedules",
    "build_schedule",
    "check_schedule_name",
    "check_schedule_spec",
    "schedule_config_problems",
    "tick_id",
]

SCHEDULE_HEADER = "backrun-schedule"
"""The header naming the schedule a tick's job serves."""
TICK_HEADER = "backrun-tick"
"""The header holding the tick time (ISO 8601, UTC) a tick's job serves."""
MISFIRE_POLICIES = ("once", "skip")
MIN_INTERVAL = timedelta(seconds=1)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_NAME = 200


def check_schedule_name(name: object) -> str:
    """Return ``name`` if it is a usable schedule name; raise ``ValueError`` otherwise."""
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME or not name.isprintable():
        raise ValueError(f"name must be 1-{_MAX_NAME} printable characters (got {name!r})")
    return name


def _zone(tz: object) -> tzinfo:
    if isinstance(tz, tzinfo):
        return tz
    if not isinstance(tz, str) or not tz:
        raise ValueError(f"tz must be a zone name or a tzinfo (got {tz!r})")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"tz: unknown time zone {tz!r}") from exc


def _interval(every: object) -> timedelta:
    if isinstance(every, bool) or not isinstance(every, timedelta | int | float):
        raise ValueError(f"every must be a timedelta or a number of seconds (got {every!r})")
    span = every if isinstance(every, timedelta) else timedelta(seconds=every)
    if span < MIN_INTERVAL:
        raise ValueError(f"every must be at least 1 second (got {span})")
    return span


def _cron(cron: object, zone: tzinfo) -> str:
    if not isinstance(cron, str):
        raise ValueError(f"cron must be a string (got {cron!r})")
    fields = cron.split()
    if len(fields) not in (5, 6):
        raise ValueError(
            f"cron: expected 5 fields (minute hour day month weekday) or 6 (seconds first), "
            f"got {len(fields)} in {cron!r}"
        )
    try:
        next(CronSim(" ".join(fields), datetime(2000, 1, 1, tzinfo=zone)))
    except CronSimError as exc:
        raise ValueError(f"cron: {exc} field in {cron!r}") from None
    except (ValueError, IndexError, KeyError) as exc:  # cronsim's own checks missed it
        raise ValueError(f"cron: cannot read {cron!r} ({exc})") from None
    except StopIteration:  # pragma: no cover - cronsim iterates forever
        raise ValueError(f"cron: {cron!r} never matches") from None
    return " ".join(fields)


def check_schedule_spec(
    *, cron: object, every: object, tz: object, misfire: object, priority: object
) -> tuple[str | None, timedelta | None, tzinfo]:
    """Validate the timing arguments of a schedule; return (cron, every, zone).

    Raises:
        ValueError: a bad value; the message names the field.
    """
    if (cron is None) == (every is None):
        raise ValueError("cron/every: give exactly one of cron= or every=")
    zone = _zone(tz)
    if misfire not in MISFIRE_POLICIES:
        raise ValueError(f"misfire must be 'once' or 'skip' (got {misfire!r})")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"priority must be an int (got {priority!r})")
    if cron is not None:
        return _cron(cron, zone), None, zone
    return None, _interval(every), zone


def tick_id(name: str, tick: datetime) -> str:
    """The job id of a schedule's tick: tick time in ns (16 hex), then 16 hex of the name's hash.

    Ids sort by tick time, like ordinary ids sort by creation time.
    """
    ns = (tick - _EPOCH) // timedelta(microseconds=1) * 1000
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{ns:016x}{digest}"


@dataclass(frozen=True)
class Schedule:
    """A periodic job: which handler runs with which payload, and when.

    Attributes:
        name: the schedule's stable name; its ticks' job ids derive from it.
        handler: the registered handler's name.
        payload: the validated payload (JSON-ready), the same for every tick.
        cron: the crontab expression, or ``None`` for an interval.
        every: the interval, or ``None`` for a cron schedule. Interval ticks
            fall on whole multiples of it since the Unix epoch, so every
            process computes the same ticks.
        tz: the zone cron fields are read in.
        queue: the queue of its jobs (``None``: the handler's).
        priority: the priority of its jobs.
        misfire: ``"once"`` (after downtime, one catch-up job) or ``"skip"``.
        next_run_at: the next tick (aware UTC), filled in by ``engine.schedules()``.
        last_tick_at: the latest tick whose job exists in the store, filled in
            by ``engine.schedules()``.
    """

    name: str
    handler: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    cron: str | None = None
    every: timedelta | None = None
    tz: tzinfo = UTC
    queue: str | None = None
    priority: int = 0
    misfire: str = "once"
    next_run_at: datetime | None = None
    last_tick_at: datetime | None = None

    @property
    def spec(self) -> str:
        """The timing as text: the cron expression, or ``every <seconds>s``."""
        if self.cron is not None:
            return self.cron
        assert self.every is not None
        return f"every {self.every.total_seconds():g}s"

    @property
    def tz_name(self) -> str:
        """The zone's name (``key`` of a ZoneInfo, else its ``str``)."""
        return str(getattr(self.tz, "key", None) or self.tz)

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after ``after`` (aware UTC)."""
        if self.every is not None:
            steps = (after - _EPOCH) // self.every + 1
            return _EPOCH + steps * self.every
        assert self.cron is not None
        local = after.astimezone(self.tz)
        return next(CronSim(self.cron, local)).astimezone(UTC)

    def latest_tick(self, at: datetime) -> datetime:
        """The last tick at or before ``at`` (aware UTC)."""
        if self.every is not None:
            return _EPOCH + ((at - _EPOCH) // self.every) * self.every
        # Step back a generous while, then walk forward: the forward walk is the
        # one place DST is resolved, so both directions always agree.
        probe = at - timedelta(seconds=1)
        while True:
            earlier = self._previous_from(probe)
            tick = self.next_tick(earlier - timedelta(microseconds=1))
            if tick > at:
                probe = earlier - timedelta(seconds=1)
                continue
            following = self.next_tick(tick)
            while following <= at:
                tick, following = following, self.next_tick(following)
            return tick

    def _previous_from(self, at: datetime) -> datetime:
        assert self.cron is not None
        local = at.astimezone(self.tz)
        return next(CronSim(self.cron, local, reverse=True)).astimezone(UTC)

    def ticks_between(self, after: datetime, until: datetime) -> list[datetime]:
        """Every tick in ``(after, until]``, oldest first."""
        ticks: list[datetime] = []
        tick = self.next_tick(after)
        while tick <= until:
            ticks.append(tick)
            tick = self.next_tick(tick)
        return ticks

    def tick_id(self, tick: datetime) -> str:
        """This schedule's job id for ``tick``."""
        return tick_id(self.name, tick)

    def tick_headers(self, tick: datetime) -> dict[str, str]:
        """The headers of the tick's job: the schedule's name and the tick time."""
        return {SCHEDULE_HEADER: self.name, TICK_HEADER: tick.astimezone(UTC).isoformat()}


def build_schedule(
    spec: HandlerSpec,
    payload: object,
    *,
    cron: object,
    every: object,
    name: object,
    tz: object,
    queue: object,
    priority: object,
    misfire: object,
    max_payload_bytes: int,
    max_payload_depth: int,
) -> Schedule:
    """Validate a schedule's arguments against its handler; return the record.

    Raises:
        ValueError: a bad timing argument, name or queue; the message names the field.
        pydantic.ValidationError: the payload does not fit the handler's type.
        PayloadTooLarge: the payload exceeds the size or depth limit.
    """
    checked_cron, checked_every, zone = check_schedule_spec(
        cron=cron, every=every, tz=tz, misfire=misfire, priority=priority
    )
    checked_name = check_schedule_name(spec.name if name is None else name)
    if queue is not None:
        if not isinstance(queue, str):
            raise ValueError(f"queue must be a string (got {queue!r})")
        check_queue(queue)
    data = spec.dump({} if payload is None else payload)
    check_payload(data, max_bytes=max_payload_bytes, max_depth=max_payload_depth)
    assert isinstance(priority, int)
    assert isinstance(misfire, str)
    return Schedule(
        name=checked_name,
        handler=spec.name,
        payload=data,
        cron=checked_cron,
        every=checked_every,
        tz=zone,
        queue=queue,
        priority=priority,
        misfire=misfire,
    )


SCHEDULE_KEYS = frozenset(
    {"handler", "payload", "cron", "every", "name", "tz", "queue", "priority", "misfire"}
)
"""The keys of one schedule in configuration: ``engine.schedule``'s arguments."""


def schedule_config_problems(entries: object, setting: str) -> list[str]:
    """Everything wrong with a list of schedule dicts, as sentences (empty when fine).

    Checks the shape and every timing field; whether each handler is registered
    is checked when the schedules are applied.
    """
    if entries is None:
        return []
    if isinstance(entries, str | bytes | Mapping) or not isinstance(entries, list | tuple):
        return [f"{setting} must be a list of dicts (one per schedule)"]
    problems: list[str] = []
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{setting}[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where} must be a dict")
            continue
        unknown = sorted(set(entry) - SCHEDULE_KEYS)
        if unknown:
            known = ", ".join(sorted(SCHEDULE_KEYS))
            problems.append(f"{where}: unknown key(s) {', '.join(map(str, unknown))} ({known})")
        handler = entry.get("handler")
        if not isinstance(handler, str) or not handler:
            problems.append(f"{where}: 'handler' must be a registered handler's name")
            continue
        try:
            check_schedule_spec(
                cron=entry.get("cron"),
                every=entry.get("every"),
                tz=entry.get("tz", "UTC"),
                misfire=entry.get("misfire", "once"),
                priority=entry.get("priority", 0),
            )
            name = check_schedule_name(entry.get("name", handler))
            queue = entry.get("queue")
            if queue is not None:
                check_queue(queue)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if name in names:
            problems.append(f"{where}: name {name!r} is used twice")
        names.add(name)
    return problems


class ScheduleTarget(Protocol):
    """Where configured schedules are declared: :class:`~backrun.engine.Engine` is one."""

    def schedule(
        self,
        handler: Any,
        payload: object = None,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        name: str | None = None,
        tz: str | tzinfo = "UTC",
        queue: str | None = None,
        priority: int = 0,
        misfire: str = "once",
    ) -> Schedule:
        """Declare a schedule; see :meth:`backrun.Engine.schedule`."""
        ...


def apply_schedules(
    engine: ScheduleTarget, entries: Iterable[Mapping[str, Any]], setting: str = "schedules"
) -> list[Schedule]:
    """Declare each configured schedule on ``engine`` (``engine.schedule(**entry)``).

    Raises:
        ValueError: an entry is malformed (every problem is listed).
        UnknownHandler: an entry names a handler that is not registered.
    """
    entries = list(entries)
    problems = schedule_config_problems(entries, setting)
    if problems:
        raise ValueError("; ".join(problems))
    declared = []
    for entry in entries:
        options = {k: v for k, v in entry.items() if k not in ("handler", "payload")}
        declared.append(engine.schedule(entry["handler"], entry.get("payload"), **options))
    return declared
