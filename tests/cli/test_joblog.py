"""LoggingMiddleware: the start and end lines, read off the recorded outcome."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import tenacity
from pydantic import BaseModel

import backrun
from backrun.joblog import JsonFormatter, LoggingMiddleware, configure_logging
from backrun.logformat import remove_logging
from backrun.testing import FakeClock


class Item(BaseModel):
    n: int


@pytest.fixture
def engine() -> Iterator[backrun.Engine]:
    clock = FakeClock()
    engine = backrun.Engine(
        backrun.MemoryStorage(),
        clock=clock,
        middleware=[LoggingMiddleware()],
        retry=backrun.RetryPolicy(max_retries=1, wait=tenacity.wait_fixed(4.1)),
    )

    @engine.handler(name="send_mail")
    def send_mail(item: Item) -> None:
        if item.n < 0:
            raise ValueError("no")

    yield engine
    engine.close()


def test_success_retry_and_dead_lines(
    engine: backrun.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backrun.jobs")
    ok = engine.enqueue("send_mail", {"n": 1})
    bad = engine.enqueue("send_mail", {"n": -1})
    engine.run_until_idle(timeout=10)
    assert isinstance(engine.clock, FakeClock)
    engine.clock.advance(5)
    engine.run_until_idle(timeout=10)
    lines = [r.getMessage() for r in caplog.records if r.name == "backrun.jobs"]
    assert f"send_mail[{ok.id}] started (attempt 1/2)" in lines
    assert any(line.startswith(f"send_mail[{ok.id}] succeeded in ") for line in lines)
    assert f"send_mail[{bad.id}] failed (ValueError: no) attempt 1/2, retry in 4.1s" in lines
    assert f"send_mail[{bad.id}] started (attempt 2/2)" in lines
    assert f"send_mail[{bad.id}] failed (ValueError: no) dead after 2 attempts" in lines
    dead = [r for r in caplog.records if "dead after" in r.getMessage()]
    assert dead[0].levelno == logging.ERROR


def test_json_lines_carry_the_fields(engine: backrun.Engine) -> None:
    stream = io.StringIO()
    handler = configure_logging("json", stream=stream)
    try:
        job = engine.enqueue("send_mail", {"n": 2}, queue="mail")
        engine.run_until_idle(timeout=10)
    finally:
        remove_logging(handler)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    done = [r for r in records if r.get("event") == "job.succeeded"]
    assert len(done) == 1
    assert done[0]["job_id"] == job.id
    assert done[0]["queue"] == "mail"
    assert done[0]["handler"] == "send_mail"
    assert done[0]["level"] == "info"
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)


def test_configure_logging_refuses_unknown_formats() -> None:
    with pytest.raises(ValueError, match="'text' or 'json'"):
        configure_logging("xml")  # type: ignore[arg-type]


def test_log_events_use_the_outcome_names_of_metrics_and_traces(
    engine: backrun.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    from backrun.jobs import Outcome

    caplog.set_level(logging.INFO, logger="backrun.jobs")
    engine.enqueue("send_mail", {"n": 1})
    engine.enqueue("send_mail", {"n": -1})
    engine.run_until_idle(timeout=10)
    assert isinstance(engine.clock, FakeClock)
    engine.clock.advance(5)
    engine.run_until_idle(timeout=10)
    events = {r.backrun["event"] for r in caplog.records if hasattr(r, "backrun")}
    ended = {e.removeprefix("job.") for e in events} - {"started"}
    # One vocabulary: a retry is "retried" in logs as in metrics and traces.
    assert ended == {Outcome.SUCCEEDED, Outcome.RETRIED, Outcome.DEAD}
    assert ended <= {o.value for o in Outcome}
