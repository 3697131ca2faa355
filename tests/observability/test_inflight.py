"""The in-flight table: either order of handler return and recorded outcome."""

from __future__ import annotations

from backrun.context import JobContext
from backrun.observability._inflight import InflightTable
from tests.helpers import make_job


def _ctx() -> JobContext:
    return JobContext(job=make_job(), attempt=1, worker_id="w", deadline=None, engine=None)  # type: ignore[arg-type]


def test_the_usual_order_leaves_nothing_running_or_stuck() -> None:
    table: InflightTable[str] = InflightTable()
    ctx = _ctx()
    entry = table.begin(ctx, "value")
    assert table.handler_returned(entry) is False
    assert table.attempt_finished(ctx, timed_out=True) == (entry, False)
    assert entry.finished
    assert not entry.stuck
    assert len(table) == 0


def test_a_timeout_recorded_while_the_handler_runs_marks_it_stuck_until_it_returns() -> None:
    table: InflightTable[str] = InflightTable()
    ctx = _ctx()
    entry = table.begin(ctx, "value")
    assert table.attempt_finished(ctx, timed_out=True) == (entry, True)
    assert entry.stuck
    assert table.handler_returned(entry) is True  # the caller then undoes the stuck count


def test_an_outcome_recorded_first_without_a_timeout_is_not_stuck() -> None:
    table: InflightTable[str] = InflightTable()
    ctx = _ctx()
    entry = table.begin(ctx, "value")
    assert table.attempt_finished(ctx) == (entry, True)
    assert not entry.stuck
    assert table.handler_returned(entry) is True


def test_an_unknown_attempt_finds_no_entry() -> None:
    table: InflightTable[str] = InflightTable()
    assert table.attempt_finished(_ctx()) == (None, False)
