"""prometheus_client's ``inc`` and ``observe``, without their per-call checks.

The metrics middleware adds to the same few labelled children on every
attempt (seven additions), and the checks those methods make first (is the
metric labelled, is the amount non-negative, an exemplar?) cost more than the
additions: a labelled child with the amounts used here always passes them.
These functions add to the value holders prometheus_client has always kept
(``_value``; a histogram's ``_sum``, ``_buckets`` and ``_upper_bounds``),
and fall back to the public method on a metric not laid out that way.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["Add", "adder", "observer"]

Add = Callable[[float], None]


def adder(child: Counter | Gauge) -> Add:
    """What ``child.inc(amount)`` does (a gauge takes -1 for ``dec()``)."""
    inc = getattr(getattr(child, "_value", None), "inc", None)
    return inc if callable(inc) else child.inc


def observer(child: Histogram) -> Add:
    """What ``child.observe(amount)`` does: the sum, and the first bucket not below it."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    add_sum = getattr(getattr(child, "_sum", None), "inc", None)
    if (
        not isinstance(bounds, list)
        or not isinstance(buckets, list)
        or not bounds
        or len(bounds) != len(buckets)
        or bounds[-1] != math.inf
        or not callable(add_sum)
    ):
        return child.observe
    adds = [getattr(bucket, "inc", None) for bucket in buckets]
    count: list[Add] = [add for add in adds if callable(add)]
    if len(count) != len(adds):
        return child.observe

    def observe(amount: float) -> None:
        add_sum(amount)
        i = bisect_left(bounds, amount)
        if i < len(count) and amount <= bounds[i]:  # a NaN lands in no bucket, as in observe
            count[i](1.0)

    return observe
