"""Periodic jobs on a fake clock: tick arithmetic, DST, misfire, bad specs, never early, removal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel, ValidationError

import backrun
from backrun.jobs import JOB_ID_PATTERN, Job
from backrun.scheduler import LAG_LIMIT, START_GRACE, Scheduler, ticks_due
from backrun.schedules import SCHEDULE_HEADER, TICK_HEADER, Schedule, tick_id
from backrun.testing import FakeClock, wait_until

PARIS = ZoneInfo("Europe/Paris")


class Report(BaseModel):
    kind: str = "daily"


def report(payload: Report) -> None:
    return None


@pytest.fixture
def engine(clock: FakeClock) -> Iterator[backrun.Engine]:
    engine = backrun.Engine(backrun.MemoryStorage(), clock=clock, middleware=[])
    engine.add_handler(report)
    yield engine
    engine.close()


def tick_jobs(engine: backrun.Engine, name: str | None = None) -> list[Job]:
    jobs = [j for j in engine.storage.find(limit=10_000) if SCHEDULE_HEADER in j.headers]
    if name is not None:
        jobs = [j for j in jobs if j.headers[SCHEDULE_HEADER] == name]
    return sorted(jobs, key=lambda j: j.run_at or datetime.min.replace(tzinfo=UTC))


def run_at_values(engine: backrun.Engine, name: str | None = None) -> list[datetime]:
    return [j.run_at for j in tick_jobs(engine, name) if j.run_at is not None]


def advance_to(clock: FakeClock, when: datetime) -> None:
    clock.advance(when - clock.now())


# -- tick arithmetic ------------------------------------------------------


def test_interval_ticks_are_aligned_to_the_epoch_and_never_early() -> None:
    s = Schedule(name="s", handler="h", every=timedelta(seconds=10))
    at = datetime(2030, 1, 1, 0, 0, 5, tzinfo=UTC)
    assert s.latest_tick(at) == datetime(2030, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert s.next_tick(at) == datetime(2030, 1, 1, 0, 0, 10, tzinfo=UTC)
    exact = datetime(2030, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert s.latest_tick(exact) == exact
    assert s.latest_tick(exact - timedelta(microseconds=1)) == exact - timedelta(seconds=10)
    assert s.next_tick(exact) == exact + timedelta(seconds=10)


def test_tick_ids_are_deterministic_valid_and_sort_by_time() -> None:
    t1 = datetime(2030, 1, 1, tzinfo=UTC)
    t2 = t1 + timedelta(seconds=1)
    assert tick_id("a", t1) == tick_id("a", t1)
    assert tick_id("a", t1) != tick_id("b", t1)
    assert tick_id("a", t1) < tick_id("a", t2)
    assert tick_id("b", t1) < tick_id("a", t2)
    for value in (tick_id("a", t1), tick_id("ü" * 200, t2)):
        assert JOB_ID_PATTERN.match(value)


@pytest.mark.parametrize(
    ("day", "expected_local", "expected_utc"),
    [
        # Spring forward: 02:30 does not exist; it runs at 03:00 CEST, the first minute after.
        (datetime(2026, 3, 29), "03:00:00+02:00", datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
        # Fall back: 02:30 happens twice; it runs once, at the first (CEST) one.
        (datetime(2026, 10, 25), "02:30:00+02:00", datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        # An ordinary day for comparison.
        (datetime(2026, 6, 1), "02:30:00+02:00", datetime(2026, 6, 1, 0, 30, tzinfo=UTC)),
    ],
)
def test_daily_0230_in_paris_runs_once_on_dst_transition_days(
    day: datetime, expected_local: str, expected_utc: datetime
) -> None:
    start = (day - timedelta(days=1)).replace(hour=12, tzinfo=PARIS).astimezone(UTC)
    clock = FakeClock(start)
    engine = backrun.Engine(backrun.MemoryStorage(), clock=clock, middleware=[])
    engine.add_handler(report)
    engine.schedule(report, cron="30 2 * * *", tz="Europe/Paris", misfire="skip")
    scheduler = Scheduler(engine, "test")
    scheduler.run_once()
    # Walk the transition day 5 minutes at a time, as a live worker would see it.
    while clock.now() < start + timedelta(days=2):
        clock.advance(timedelta(minutes=5))
        scheduler.run_once()
    runs = run_at_values(engine)
    on_day = [r for r in runs if r.astimezone(PARIS).date() == day.date()]
    assert on_day == [expected_utc]
    assert on_day[0].astimezone(PARIS).isoformat().endswith(expected_local)
    assert len(runs) == 2  # the transition day and the next, nothing twice


# -- the scheduler on a fake clock ------------------------------------------


def test_tick_job_is_an_ordinary_job_with_run_at_the_tick_and_headers(
    engine: backrun.Engine, clock: FakeClock
) -> None:
    engine.schedule(report, {"kind": "hourly"}, every=3600, name="hourly", priority=3)
    scheduler = Scheduler(engine, "test")
    tick = Schedule(name="x", handler="h", every=timedelta(hours=1)).next_tick(clock.now())
    advance_to(clock, tick)
    scheduler.run_once()
    (job,) = tick_jobs(engine)
    assert job.id == tick_id("hourly", tick)
    assert job.run_at == tick
    assert job.run_at.tzinfo is UTC
    assert job.headers[SCHEDULE_HEADER] == "hourly"
    assert job.headers[TICK_HEADER] == tick.isoformat()
    assert job.payload == {"kind": "hourly"}
    assert job.priority == 3
    assert job.state is backrun.JobState.QUEUED
    assert engine.run_until_idle() == 1
    finished = engine.get(job.id)
    assert finished is not None
    assert finished.state is backrun.JobState.SUCCEEDED


def test_a_tick_is_never_created_early(engine: backrun.Engine, clock: FakeClock) -> None:
    s = engine.schedule(report, every=60)
    scheduler = Scheduler(engine, "test")
    tick = s.next_tick(clock.now() + timedelta(seconds=1))
    advance_to(clock, tick - timedelta(microseconds=1))
    scheduler.run_once()
    created = run_at_values(engine)
    assert tick not in created
    clock.advance(timedelta(microseconds=1))
    scheduler.run_once()
    assert run_at_values(engine)[-1] == tick


def test_every_tick_once_while_running(engine: backrun.Engine, clock: FakeClock) -> None:
    s = engine.schedule(report, every=10)
    first = s.next_tick(clock.now())
    advance_to(clock, first)
    schedulers = [Scheduler(engine, "a"), Scheduler(engine, "b"), Scheduler(engine, "c")]
    for _ in range(30):
        for scheduler in schedulers:
            scheduler.run_once()
        clock.advance(timedelta(seconds=3.3))
    runs = run_at_values(engine)
    expected = [first + timedelta(seconds=10 * i) for i in range(len(runs))]
    assert runs == expected
    assert len(runs) == 10
    assert sum(s.created for s in schedulers) == 10


def test_a_slow_process_creates_the_ticks_it_passed_within_the_lag_limit(
    engine: backrun.Engine, clock: FakeClock
) -> None:
    s = engine.schedule(report, every=1, misfire="skip")
    advance_to(clock, s.next_tick(clock.now()))
    scheduler = Scheduler(engine, "slow")
    scheduler.run_once()
    clock.advance(timedelta(seconds=5.5))  # a 5.5 s pause: 5 ticks passed
    scheduler.run_once()
    runs = run_at_values(engine)
    assert len(runs) == 6
    assert runs == [runs[0] + timedelta(seconds=i) for i in range(6)]


@pytest.mark.parametrize(("misfire", "expected"), [("once", 1), ("skip", 0)])
def test_misfire_after_every_worker_was_down_for_5_ticks(
    engine: backrun.Engine, clock: FakeClock, misfire: str, expected: int
) -> None:
    s = engine.schedule(report, every=60, misfire=misfire)
    advance_to(clock, s.next_tick(clock.now()))
    Scheduler(engine, "before").run_once()
    assert len(run_at_values(engine)) == 1
    # Every worker is down for 5 ticks and comes back 30 s after the last of them.
    clock.advance(timedelta(minutes=5, seconds=30))
    for name in ("first-back", "second-back"):
        Scheduler(engine, name).run_once()
    runs = run_at_values(engine)
    assert len(runs) == 1 + expected
    if expected:
        assert runs[-1] == s.latest_tick(clock.now())  # the catch-up is the latest missed tick
    # Then ticks resume normally, once each.
    back = Scheduler(engine, "third")
    back.run_once()
    advance_to(clock, s.next_tick(clock.now()))
    back.run_once()
    assert len(run_at_values(engine)) == 2 + expected


def test_misfire_through_real_workers(engine: backrun.Engine, clock: FakeClock) -> None:
    s = engine.schedule(report, every=60)
    advance_to(clock, s.next_tick(clock.now()))
    with engine.running():
        wait_until(lambda: len(run_at_values(engine)) == 1)
    clock.advance(timedelta(minutes=5, seconds=10))
    with engine.running(), engine.running():
        wait_until(lambda: len(run_at_values(engine)) == 2)
        time.sleep(0.05)
    assert len(run_at_values(engine)) == 2


def test_a_worker_started_right_after_a_tick_creates_it_under_skip(
    engine: backrun.Engine, clock: FakeClock
) -> None:
    s = engine.schedule(report, every=3600, misfire="skip")
    tick = s.next_tick(clock.now())
    advance_to(clock, tick + START_GRACE / 2)
    Scheduler(engine, "late-start").run_once()
    assert run_at_values(engine) == [tick]


def test_ticks_past_half_the_retention_are_never_created() -> None:
    s = Schedule(name="s", handler="h", every=timedelta(days=1))
    now = datetime(2030, 1, 1, 12, tzinfo=UTC)
    assert ticks_due(s, None, now, None) == [datetime(2030, 1, 1, tzinfo=UTC)]
    assert ticks_due(s, None, now, timedelta(days=7)) == [datetime(2030, 1, 1, tzinfo=UTC)]
    assert ticks_due(s, None, now, timedelta(hours=12)) == []


def test_lag_beyond_the_limit_counts_as_downtime() -> None:
    s = Schedule(name="s", handler="h", every=timedelta(seconds=1), misfire="skip")
    cursor = datetime(2030, 1, 1, tzinfo=UTC)
    now = cursor + LAG_LIMIT * 3 + timedelta(milliseconds=500)
    ticks = ticks_due(s, cursor, now, None)
    assert len(ticks) == int(LAG_LIMIT.total_seconds())
    assert ticks[0] > now - LAG_LIMIT


def test_removed_schedule_creates_no_more_ticks(engine: backrun.Engine, clock: FakeClock) -> None:
    s = engine.schedule(report, every=60, name="gone")
    engine.schedule(report, every=60, name="kept")
    scheduler = Scheduler(engine, "test")
    advance_to(clock, s.next_tick(clock.now()))
    scheduler.run_once()
    engine.unschedule("gone")
    for _ in range(3):
        clock.advance(timedelta(seconds=60))
        scheduler.run_once()
    assert len(run_at_values(engine, "gone")) == 1
    assert len(run_at_values(engine, "kept")) == 4
    with pytest.raises(KeyError):
        engine.unschedule("gone")


def test_a_fresh_engine_without_the_schedule_creates_nothing(clock: FakeClock) -> None:
    storage = backrun.MemoryStorage()
    old = backrun.Engine(storage, clock=clock, middleware=[])
    old.add_handler(report)
    s = old.schedule(report, every=60)
    advance_to(clock, s.next_tick(clock.now()))
    Scheduler(old, "old").run_once()
    new = backrun.Engine(storage, clock=clock, middleware=[])  # the code no longer declares it
    new.add_handler(report)
    for _ in range(3):
        clock.advance(timedelta(seconds=60))
        Scheduler(new, "new").run_once()
    assert len(run_at_values(new)) == 1


def test_schedules_lists_next_run_and_last_tick(engine: backrun.Engine, clock: FakeClock) -> None:
    s = engine.schedule(report, cron="*/5 * * * *", tz="Europe/Paris", name="five")
    engine.schedule(report, every=timedelta(hours=1), name="hourly")
    (five, hourly) = engine.schedules()
    assert (five.name, hourly.name) == ("five", "hourly")
    assert five.last_tick_at is None
    assert five.next_run_at == s.next_tick(clock.now())
    assert five.spec == "*/5 * * * *"
    assert five.tz_name == "Europe/Paris"
    assert hourly.spec == "every 3600s"
    tick = s.next_tick(clock.now())
    advance_to(clock, tick)
    Scheduler(engine, "test").run_once()
    clock.advance(timedelta(minutes=2))
    five = engine.schedules()[0]
    assert five.last_tick_at == tick
    assert five.next_run_at == tick + timedelta(minutes=5)


def test_schedule_added_while_running_wakes_the_scheduler(
    engine: backrun.Engine, clock: FakeClock
) -> None:
    clock.advance(timedelta(seconds=30))  # mid-interval: nothing is on time at start
    with engine.running():
        s = engine.schedule(report, every=60, misfire="skip")
        tick = s.next_tick(clock.now())
        advance_to(clock, tick)
        wait_until(lambda: run_at_values(engine) == [tick])
        wait_until(lambda: all(j.finished for j in tick_jobs(engine)))


def test_ticks_are_created_within_50ms_on_an_idle_worker() -> None:
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[], threads=1)
    engine.add_handler(report)
    created: list[float] = []

    def stamp(job: Job) -> None:
        assert job.run_at is not None
        created.append((datetime.now(UTC) - job.run_at).total_seconds())

    engine.tick_created = stamp  # type: ignore[method-assign]
    engine.schedule(report, every=1)
    with engine.running():
        wait_until(lambda: len(created) >= 4, timeout=10)
    late = created[1:]  # the first may be a start-up tick from up to 1 s ago
    assert all(0 <= d < 0.05 for d in late), late


# -- bad specs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "* * * * * * *"}, "cron"),
        ({"cron": "*/0 * * * *"}, "cron"),
        ({"cron": 5}, "cron"),
        ({"every": 0.5}, "every"),
        ({"every": -1}, "every"),
        ({"every": "10"}, "every"),
        ({"every": True}, "every"),
        ({}, "cron/every"),
        ({"cron": "* * * * *", "every": 10}, "cron/every"),
        ({"every": 10, "tz": "Mars/Olympus"}, "tz"),
        ({"every": 10, "tz": ""}, "tz"),
        ({"every": 10, "misfire": "all"}, "misfire"),
        ({"every": 10, "name": ""}, "name"),
        ({"every": 10, "name": "x" * 201}, "name"),
        ({"every": 10, "queue": "no spaces"}, "queue"),
        ({"every": 10, "priority": "high"}, "priority"),
    ],
)
def test_a_bad_spec_raises_value_error_naming_the_field(
    engine: backrun.Engine, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=rf"\A{field}\b"):
        engine.schedule(report, **kwargs)  # type: ignore[arg-type]
    assert engine.schedule_list() == []


def test_payload_is_validated_at_schedule_time(engine: backrun.Engine) -> None:
    with pytest.raises(ValidationError):
        engine.schedule(report, {"kind": 5}, every=10)
    with pytest.raises(backrun.UnknownHandler):
        engine.schedule("nope", every=10)


def test_duplicate_names_are_refused(engine: backrun.Engine) -> None:
    engine.schedule(report, every=10)
    with pytest.raises(ValueError, match="name"):
        engine.schedule(report, every=20)
    engine.schedule(report, every=20, name="report-2")
    assert [s.name for s in engine.schedule_list()] == ["tests.test_schedules.report", "report-2"]


def test_a_tick_is_created_while_the_previous_ticks_job_still_runs(
    engine: backrun.Engine, clock: FakeClock
) -> None:
    s = engine.schedule(report, every=60)
    scheduler = Scheduler(engine, "test")
    advance_to(clock, s.next_tick(clock.now()))
    scheduler.run_once()
    (first,) = engine.storage.claim(
        queues=None, limit=1, now=clock.now(), worker_id="w", lease=timedelta(hours=1)
    )
    clock.advance(timedelta(seconds=60))
    scheduler.run_once()
    jobs = tick_jobs(engine)
    assert [j.state for j in jobs] == [backrun.JobState.RUNNING, backrun.JobState.QUEUED]
    assert jobs[0].id == first.id
