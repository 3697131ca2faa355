"""How the dashboard shows values: relative times, JSON, trace ids, the throughput chart."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from backrun.jobs import JobState

__all__ = ["Bar", "Chart", "ago", "chart", "duration", "exact", "pretty_json", "trace_id"]

_TRACEPARENT = re.compile(r"\A[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}\Z")


def duration(seconds: float) -> str:
    """A short human duration: ``12 s``, ``3 min``, ``2 h 5 min``, ``4 days``."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} days"


def ago(moment: datetime | None, now: datetime) -> str:
    """``3 min ago``, ``in 5 min`` or ``just now``; ``-`` for no time."""
    if moment is None:
        return "-"
    seconds = (now - moment).total_seconds()
    if abs(seconds) < 5:
        return "just now"
    return f"{duration(seconds)} ago" if seconds > 0 else f"in {duration(seconds)}"


def exact(moment: datetime | None) -> str:
    """The exact UTC time, for hover text: ``2026-11-29 05:33:12.345 UTC``."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def pretty_json(value: object) -> str:
    """Indented, key-sorted JSON; the template escapes it."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def trace_id(headers: Mapping[str, str]) -> str | None:
    """The W3C trace id of a job's ``traceparent`` header, if it has a valid one."""
    match = _TRACEPARENT.match(str(headers.get("traceparent", "")))
    return None if match is None else match.group(1)


@dataclass(frozen=True)
class Bar:
    """One stacked bar segment of the chart, in SVG user units."""

    x: float
    y: float
    width: float
    height: float
    state: str
    count: int
    label: str


@dataclass(frozen=True)
class Chart:
    """The throughput chart: bars, axis labels, totals."""

    width: int
    height: int
    bars: list[Bar]
    peak: int
    totals: dict[str, int]
    ticks: list[tuple[float, str]]


CHART_STATES = (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)


def chart(
    counts: Mapping[JobState, list[int]], *, since: datetime, span: timedelta, buckets: int
) -> Chart:
    """Lay out stacked bars (succeeded, dead, cancelled) per time bucket."""
    width, height, top, bottom = 1140, 200, 24, 26
    slot = width / buckets
    peak = max(
        [sum(counts.get(s, [0] * buckets)[i] for s in CHART_STATES) for i in range(buckets)] + [1]
    )
    scale = (height - top - bottom) / peak
    step = span / buckets
    bars: list[Bar] = []
    for i in range(buckets):
        base = float(height - bottom)
        start = since + step * i
        for state in CHART_STATES:
            n = counts.get(state, [0] * buckets)[i]
            if not n:
                continue
            h = n * scale
            base -= h
            bars.append(
                Bar(
                    x=round(i * slot + 3, 1),
                    y=round(base, 1),
                    width=round(slot - 6, 1),
                    height=round(h, 1),
                    state=state.value,
                    count=n,
                    label=f"{n} {state.value}, {start:%H:%M}-{start + step:%H:%M} UTC",
                )
            )
    ticks = [
        (round(i * slot + slot / 2, 1), f"{(since + step * i):%H:%M}")
        for i in range(0, buckets, max(buckets // 6, 1))
    ]
    totals = {s.value: sum(counts.get(s, [])) for s in CHART_STATES}
    return Chart(width, height, bars, peak, totals, ticks)
