"""Shared fixtures: an engine on MemoryStorage driven by a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import tenacity
from pydantic import BaseModel

import backrun
from backrun.testing import FakeClock


class Numbers(BaseModel):
    a: int
    b: int = 0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(clock: FakeClock) -> Iterator[backrun.Engine]:
    engine = backrun.Engine(
        backrun.MemoryStorage(),
        clock=clock,
        middleware=[],
        threads=4,
        retry=backrun.RetryPolicy(max_retries=3, wait=tenacity.wait_fixed(10)),
        shutdown_timeout=5.0,
    )
    yield engine
    engine.close()


@pytest.fixture
def fast_lease() -> timedelta:
    return timedelta(milliseconds=300)
