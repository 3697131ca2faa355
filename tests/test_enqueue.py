"""Enqueue: validation, scheduling, registration, and refusals that store nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
import pytest

import backrun
from backrun.testing import FakeClock
from tests.conftest import Numbers


class SendMail(pydantic.BaseModel):
    to: str
    subject: str


class Loose(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    a: int


class SendMailHandler(backrun.Handler[SendMail]):
    name = "send_mail"
    retry = backrun.RetryPolicy(max_retries=5)

    def __init__(self, outbox: list[str]) -> None:
        self.outbox = outbox

    def execute(self, payload: SendMail, ctx: backrun.JobContext) -> None:
        self.outbox.append(f"{payload.to}:{payload.subject}:{ctx.attempt}")


def test_enqueue_validates_and_stores_a_durable_job(
    engine: backrun.Engine, clock: FakeClock
) -> None:
    outbox: list[str] = []
    engine.add_handler(SendMailHandler, factory=lambda: SendMailHandler(outbox))
    job = engine.enqueue(SendMailHandler, SendMail(to="a@b.c", subject="Hi"))
    assert job.state is backrun.JobState.QUEUED
    assert job.handler == "send_mail"
    assert job.payload == {"to": "a@b.c", "subject": "Hi"}
    assert job.max_attempts == 6
    assert job.run_at == job.created_at == clock.now()
    assert engine.get(job.id) == job
    engine.run_until_idle(timeout=10)
    assert outbox == ["a@b.c:Hi:1"]
    done = engine.get(job.id)
    assert done is not None
    assert done.state is backrun.JobState.SUCCEEDED


def test_enqueue_by_name_with_a_dict_queue_and_priority(
    engine: backrun.Engine, clock: FakeClock
) -> None:
    engine.add_handler(SendMailHandler, factory=lambda: SendMailHandler([]))
    at = clock.now() + timedelta(hours=2)
    job = engine.enqueue(
        "send_mail", {"to": "a@b.c", "subject": "Hi"}, at=at, queue="mail", priority=10
    )
    assert (job.state, job.run_at, job.queue, job.priority) == (
        backrun.JobState.SCHEDULED,
        at,
        "mail",
        10,
    )


def test_delay_accepts_timedelta_and_seconds(engine: backrun.Engine, clock: FakeClock) -> None:
    @engine.handler
    def noop(payload: Numbers) -> None:
        pass

    assert engine.enqueue(noop, {"a": 1}, delay=timedelta(days=1)).run_at == clock.now() + (
        timedelta(days=1)
    )
    assert engine.enqueue(noop, {"a": 1}, delay=2.5).run_at == clock.now() + timedelta(seconds=2.5)


def test_function_handler_default_name_and_payload_type(engine: backrun.Engine) -> None:
    @engine.handler()
    def add(payload: Numbers) -> None:
        pass

    job = engine.enqueue(add, {"a": "3"})
    assert job.handler == f"{__name__}.{add.__qualname__}"
    assert job.payload == {"a": 3, "b": 0}


REFUSALS: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("bad payload", {"payload": {"a": "not a number"}}, pydantic.ValidationError),
    ("missing field", {"payload": {}}, pydantic.ValidationError),
    ("unknown name", {"handler": "nope"}, backrun.UnknownHandler),
    ("unregistered class", {"handler": SendMailHandler}, backrun.UnknownHandler),
    ("naive at", {"at": datetime(2030, 1, 1)}, ValueError),
    ("negative delay", {"delay": timedelta(seconds=-1)}, ValueError),
    ("delay and at", {"delay": 1, "at": datetime(2030, 1, 1, tzinfo=UTC)}, ValueError),
    ("bad queue", {"queue": "../etc"}, ValueError),
    ("too large", {"payload": {"a": 1, "blob": "x" * 2_000_000}}, backrun.PayloadTooLarge),
    ("bool priority", {"priority": True}, TypeError),
]


@pytest.mark.parametrize(("case", "override", "error"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_enqueue_raises_and_stores_nothing(
    engine: backrun.Engine, case: str, override: dict[str, Any], error: type[Exception]
) -> None:
    @engine.handler(name="loose")
    def loose(payload: Loose) -> None:
        pass

    kwargs: dict[str, Any] = {"handler": "loose", "payload": {"a": 1}}
    kwargs.update(override)
    handler, payload = kwargs.pop("handler"), kwargs.pop("payload")
    with pytest.raises(error):
        engine.enqueue(handler, payload, **kwargs)
    assert engine.jobs() == []


def test_payload_nested_too_deep_is_refused(engine: backrun.Engine) -> None:
    @engine.handler(name="tree")
    def tree(payload: dict[str, Any]) -> None:
        pass

    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node["child"] = {}
        node = node["child"]
    with pytest.raises(backrun.PayloadTooLarge, match="deeper"):
        engine.enqueue(tree, deep)
    engine.enqueue(tree, {"child": {"child": {}}})
    assert len(engine.jobs()) == 1


def test_construction_refuses_bad_settings() -> None:
    store = backrun.MemoryStorage()
    with pytest.raises(ValueError, match="threads"):
        backrun.Engine(store, threads=0, middleware=[])
    with pytest.raises(ValueError, match="max_retries"):
        backrun.RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="timeout"):
        backrun.RetryPolicy(timeout=timedelta(0))


def test_two_handlers_under_one_name_are_refused(engine: backrun.Engine) -> None:
    @engine.handler(name="same")
    def first(payload: Numbers) -> None:
        pass

    def second(payload: Numbers) -> None:
        pass

    with pytest.raises(ValueError, match="same"):
        engine.add_handler(second, name="same")


def test_a_class_needing_arguments_needs_a_factory(engine: backrun.Engine) -> None:
    with pytest.raises(TypeError, match="factory"):
        engine.add_handler(SendMailHandler)


def test_get_cancel_retry_of_unknown_ids(engine: backrun.Engine) -> None:
    missing = "0" * 32
    assert engine.get(missing) is None
    with pytest.raises(backrun.JobNotFound):
        engine.cancel(missing)
    with pytest.raises(backrun.JobNotFound):
        engine.retry(missing)
    with pytest.raises(ValueError, match="job id"):
        engine.get("../../etc/passwd")


def test_cancel_a_queued_job_then_retry_it(engine: backrun.Engine) -> None:
    ran: list[int] = []

    @engine.handler
    def work(payload: Numbers) -> None:
        ran.append(payload.a)

    job = engine.enqueue(work, {"a": 7})
    assert engine.cancel(job.id).state is backrun.JobState.CANCELLED
    engine.run_until_idle(timeout=10)
    assert ran == []
    assert engine.retry(job.id).state is backrun.JobState.QUEUED
    engine.run_until_idle(timeout=10)
    assert ran == [7]


def test_enqueue_many_is_one_batch(engine: backrun.Engine) -> None:
    ran: list[int] = []

    @engine.handler
    def work(payload: Numbers) -> None:
        ran.append(payload.a)

    jobs = engine.enqueue_many(work, [{"a": i} for i in range(50)], queue="bulk")
    assert {j.queue for j in jobs} == {"bulk"}
    with pytest.raises(pydantic.ValidationError):
        engine.enqueue_many(work, [{"a": 1}, {"a": "bad"}])
    assert len(engine.jobs(limit=1000)) == 50
    engine.run_until_idle(timeout=10)
    assert sorted(ran) == list(range(50))


def test_handlers_discovered_from_a_package(engine: backrun.Engine) -> None:
    names = engine.add_handlers_from_package("tests.fixtures.discovered")
    assert sorted(names) == ["discovered.greet", "discovered.shout"]
    engine.enqueue("discovered.greet", {"name": "ada"})
    engine.enqueue("discovered.shout", {"name": "bob"})
    engine.run_until_idle(timeout=10)
    from tests.fixtures.discovered import LOG

    assert sorted(LOG) == ["HELLO BOB", "hello ada"]
    assert engine.add_handlers_from_package("tests.fixtures.discovered") == []


def test_connection_needs_a_store_that_can_join_a_transaction(engine: backrun.Engine) -> None:
    @engine.handler
    def work(payload: Numbers) -> None:
        pass

    with pytest.raises(TypeError, match="PostgresStorage"):
        engine.enqueue(work, {"a": 1}, connection=object())
    with pytest.raises(TypeError, match="PostgresStorage"):
        engine.enqueue_many(work, [{"a": 1}], connection=object())
    assert engine.jobs() == []


def test_transactional_enqueue_follows_the_declared_capability(clock: FakeClock) -> None:
    from collections.abc import Sequence

    from backrun.jobs import Job
    from backrun.storage.base import Capabilities

    class Joins(backrun.MemoryStorage):
        """A store that declares transactions; no method signature is inspected."""

        capabilities = Capabilities(transactional_enqueue=True)

        def __init__(self) -> None:
            super().__init__()
            self.joined: list[tuple[list[str], object]] = []

        def add_in_transaction(self, jobs: Sequence[Job], *, connection: Any) -> None:
            self.joined.append(([j.id for j in jobs], connection))
            self.add_many(jobs)

    store = Joins()
    engine = backrun.Engine(store, clock=clock)
    try:

        @engine.handler
        def work(payload: Numbers) -> None:
            pass

        conn = object()
        one = engine.enqueue(work, {"a": 1}, connection=conn)
        many = engine.enqueue_many(work, [{"a": 2}, {"a": 3}], connection=conn)
        assert store.joined == [([one.id], conn), ([j.id for j in many], conn)]
    finally:
        engine.close()


def test_a_handler_and_its_model_defined_inside_a_function(engine: backrun.Engine) -> None:
    class Local(pydantic.BaseModel):
        word: str

    seen: list[str] = []

    @engine.handler(name="local")
    def local(payload: Local) -> None:
        seen.append(payload.word)

    with pytest.raises(pydantic.ValidationError):
        engine.enqueue("local", {"word": 3})
    engine.enqueue("local", {"word": "hi"})
    engine.run_until_idle(timeout=10)
    assert seen == ["hi"]


# -- hostile values: one documented error each, nothing written -------------------


class Floats(pydantic.BaseModel):
    x: float
    extra: Any = None


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


HOSTILE_PAYLOADS: list[tuple[str, Any, type[Exception], str]] = [
    ("nan", {"x": float("nan")}, ValueError, r"nan at \$\.x"),
    ("inf", {"x": float("inf")}, ValueError, r"inf at \$\.x"),
    (
        "-inf nested",
        {"x": 1.0, "extra": {"a": [0.5, float("-inf")]}},
        ValueError,
        r"\$\.extra\.a\[1\]",
    ),
    ("nan as text", {"x": "NaN"}, ValueError, "JSON has no NaN"),
    ("model holding nan", Floats(x=float("nan")), ValueError, "JSON has no NaN"),
    ("100k deep", {"x": 1.0, "extra": _deep(100_000)}, backrun.PayloadTooLarge, "deeper"),
    ("int past 64 bits", {"x": 1.0, "extra": 2**64}, ValueError, "beyond 64 bits"),
    ("negative int past 64 bits", {"x": 1.0, "extra": [-(2**63) - 1]}, ValueError, "64 bits"),
]


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [case[1:] for case in HOSTILE_PAYLOADS],
    ids=[case[0] for case in HOSTILE_PAYLOADS],
)
def test_hostile_payloads_are_refused_at_enqueue_and_nothing_is_written(
    engine: backrun.Engine, payload: Any, error: type[Exception], match: str
) -> None:
    @engine.handler(name="floats")
    def floats(payload: Floats) -> None:
        pass

    with pytest.raises(error, match=match):
        engine.enqueue(floats, payload)
    with pytest.raises(error, match=match):
        engine.enqueue_many(floats, [{"x": 1.0}, payload])
    assert engine.counts() == {}


def test_limits_hold_exactly_at_their_edges(engine: backrun.Engine) -> None:
    @engine.handler(name="floats")
    def floats(payload: Floats) -> None:
        pass

    edge = engine.enqueue(floats, {"x": 1e308, "extra": [2**64 - 1, -(2**63), _deep(30)]})
    assert edge.payload["extra"][0] == 2**64 - 1


@pytest.mark.parametrize(
    ("delay", "match"),
    [
        (1e300, "too long"),
        (timedelta.max, "too long"),
        (10**12, "too long"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (float("-inf"), "finite"),
        (-1, "negative"),
    ],
    ids=["1e300", "timedelta.max", "10**12", "nan", "inf", "-inf", "negative"],
)
def test_impossible_delays_are_a_clear_value_error(
    engine: backrun.Engine, delay: Any, match: str
) -> None:
    @engine.handler(name="n")
    def n(payload: Numbers) -> None:
        pass

    with pytest.raises(ValueError, match=match):
        engine.enqueue(n, {"a": 1}, delay=delay)
    with pytest.raises(ValueError, match=match):
        engine.enqueue_many(n, [{"a": 1}], delay=delay)
    assert engine.counts() == {}


def test_an_empty_queue_name_is_refused_not_defaulted(engine: backrun.Engine) -> None:
    @engine.handler(name="n")
    def n(payload: Numbers) -> None:
        pass

    for bad in ("", " ", "a/b"):
        with pytest.raises(ValueError, match="queue names"):
            engine.enqueue(n, {"a": 1}, queue=bad)
        with pytest.raises(ValueError, match="queue names"):
            engine.enqueue_many(n, [{"a": 1}], queue=bad)
    with pytest.raises(TypeError, match="headers"):
        engine.enqueue(n, {"a": 1}, headers={"k": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="32 bits"):
        engine.enqueue(n, {"a": 1}, priority=2**40)
    assert engine.counts() == {}
