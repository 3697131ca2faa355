"""The enqueue path's fast checks and encodings decide and write exactly as the slow forms."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections import OrderedDict
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import backrun
from backrun.enqueueing import build_job
from backrun.errors import PayloadTooLarge
from backrun.jobs import JOB_ID_PATTERN, Job, JobError, new_job_id
from backrun.payload_values import _clean, _walk, check_values
from backrun.retries import RetryPolicy
from backrun.serialization import _depth, check_payload, dump_job, job_to_dict


class Model(pydantic.BaseModel, extra="allow"):
    x: Any = None


_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.sampled_from(["{[", "]}", "null"]),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=True, allow_infinity=True),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.text(max_size=2)
    return st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(keys, children, max_size=3),
        st.dictionaries(keys, children, max_size=3).map(OrderedDict),
        st.frozensets(st.one_of(st.integers(), st.text(max_size=2)), max_size=2),
        children.map(lambda child: Model(x=child)),
        st.builds(lambda a, b: Model.model_validate({"x": a, "more": b}), children, children),
    )


VALUES = st.recursive(_leaves, _containers, max_leaves=12)


def _walk_outcome(value: Any, depth: int) -> str | None:
    try:
        _walk(value, depth)
    except (ValueError, PayloadTooLarge) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@settings(max_examples=400, deadline=None)
@given(VALUES, st.integers(min_value=-1, max_value=6))
def test_the_fast_value_check_agrees_with_the_full_walk(value: Any, depth: int) -> None:
    walked = _walk_outcome(value, depth)
    assert _clean(value, depth) is (walked is None)
    try:
        check_values(value, depth)
        checked = None
    except (ValueError, PayloadTooLarge) as exc:
        checked = f"{type(exc).__name__}: {exc}"
    assert checked == walked  # the same first error, path included


def _reference_check_payload(payload: Any, max_bytes: int, max_depth: int) -> int:
    # check_payload as it was: the depth walk first, then the encoding.
    if _depth(payload, max_depth) > max_depth:
        raise PayloadTooLarge(f"payload nests deeper than the limit of {max_depth} levels")
    try:
        size = len(orjson.dumps(payload))
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"payload is not JSON-serializable: {exc}") from None
    if size > max_bytes:
        raise PayloadTooLarge(f"payload is {size} bytes; the limit is {max_bytes}")
    return size


_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.text(max_size=4),
        st.sampled_from(["[[[[", "{{{{{", "]"]),
        st.integers(min_value=-(2**65), max_value=2**65),
        st.just(object()),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=2), children, max_size=3)
    ),
    max_leaves=10,
)


def _outcome(check: Any, payload: Any, max_bytes: int, max_depth: int) -> str:
    try:
        return str(check(payload, max_bytes=max_bytes, max_depth=max_depth))
    except (TypeError, PayloadTooLarge) as exc:
        return f"{type(exc).__name__}: {exc}"


@settings(max_examples=400, deadline=None)
@given(_JSON, st.integers(min_value=1, max_value=80), st.integers(min_value=0, max_value=5))
def test_the_payload_check_decides_as_the_depth_walk_then_encoding_did(
    payload: Any, max_bytes: int, max_depth: int
) -> None:
    def reference(payload: Any, *, max_bytes: int, max_depth: int) -> int:
        return _reference_check_payload(payload, max_bytes, max_depth)

    assert _outcome(check_payload, payload, max_bytes, max_depth) == _outcome(
        reference, payload, max_bytes, max_depth
    )


def test_a_deep_payload_past_the_encoders_own_limit_is_too_deep_not_unserializable() -> None:
    payload: Any = 1
    for _ in range(300):
        payload = [payload]
    with pytest.raises(PayloadTooLarge, match="deeper than the limit of 32"):
        check_payload(payload)


def test_built_jobs_equal_jobs_built_by_the_dataclass() -> None:
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[])

    @engine.handler(name="h", queue="q")
    def h(payload: Model) -> None:
        pass

    now = datetime(2026, 1, 1, tzinfo=UTC)
    spec = engine.registry.resolve(h)
    job = build_job(
        spec,
        {"x": [1, "a"]},
        now=now,
        delay=5,
        at=None,
        queue=None,
        priority=3,
        headers={"k": "v"},
        default_policy=RetryPolicy(),
        max_payload_bytes=1000,
        max_payload_depth=4,
    )
    fields = {f.name: getattr(job, f.name) for f in dataclasses.fields(Job)}
    assert set(job.__dict__) == set(fields)
    assert Job(**fields) == job
    assert (job.queue, job.priority, job.headers) == ("q", 3, {"k": "v"})
    assert (job.state, job.errors, job.attempts) == (backrun.JobState.SCHEDULED, (), 0)
    engine.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads (3.12+)
def test_job_ids_are_well_formed_ordered_and_differ_in_a_forked_child() -> None:
    ids = [new_job_id() for _ in range(1000)]
    assert all(JOB_ID_PATTERN.match(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert [i[:16] for i in ids] == sorted(i[:16] for i in ids)
    if sys.platform == "win32" or not hasattr(os, "fork"):
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_job_id()[16:].encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_random = os.read(read, 64).decode()
    os.close(read)
    assert child_random != new_job_id()[16:]
    assert JOB_ID_PATTERN.match("0" * 16 + child_random)


_TIMES = st.one_of(
    st.none(),
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(timezones=st.sampled_from([timezone(timedelta(hours=5, minutes=30)), UTC])),
    st.datetimes(timezones=st.timezones()),
    st.datetimes(),
)


@settings(max_examples=300, deadline=None)
@given(
    _TIMES,
    _TIMES,
    _TIMES,
    st.lists(st.datetimes(timezones=st.one_of(st.just(UTC), st.timezones())), max_size=2),
    st.one_of(st.none(), st.text(min_size=1, max_size=3)),
    _TIMES,
    st.booleans(),
)
def test_dump_job_writes_the_bytes_of_job_to_dict(
    run_at: datetime | None,
    started_at: datetime | None,
    lease: datetime | None,
    error_times: list[datetime],
    unique_key: str | None,
    unique_until: datetime | None,
    indent: bool,
) -> None:
    job = Job(
        id="0" * 32,
        handler="h",
        payload={"when": "2026-01-01T00:00:00+00:00", "n": [1, 2.5]},
        run_at=run_at,
        created_at=run_at,
        started_at=started_at,
        finished_at=lease,
        lease_expires_at=lease,
        errors=tuple(JobError("E", "m", "tb", n, at) for n, at in enumerate(error_times)),
        unique_key=unique_key,
        unique_until=unique_until,
    )
    option = orjson.OPT_INDENT_2 if indent else 0
    assert dump_job(job, indent=indent) == orjson.dumps(job_to_dict(job), option=option)
