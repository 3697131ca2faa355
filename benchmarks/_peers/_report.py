"""Summaries, targets and tables for compare.py (project interpreter, stdlib only)."""

from __future__ import annotations

import statistics
from typing import Any

RATE_COLUMNS = [("enqueue", "Enqueue /s"), ("drain", "Drain /s"), ("e2e", "End-to-end /s")]
TIME_COLUMNS = [("pickup_p50_ms", "Pickup p50 ms"), ("pickup_p99_ms", "Pickup p99 ms")]
DASH = "\u2013"  # en dash, for ranges in the tables
MAIN = "backrun memory"
JSON_FSYNC = "backrun JSON fsync"
LIMIT_NAMES = (
    "bare ThreadPoolExecutor(4)",
    "durable write, 1 thread",
    "durable write, 4 threads",
    "rename between directories",
)


def brief(result: dict[str, Any]) -> str:
    """One line for the progress output."""
    parts = []
    for key, label in (("drain", "drain"), ("rate", "rate"), ("pickup_p50_ms", "p50")):
        if key in result:
            unit = " ms" if key.endswith("_ms") else "/s"
            parts.append(f"{label} {result[key]:,.{2 if unit == ' ms' else 0}f}{unit}")
    return ", ".join(parts)


def summarize(samples: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Median, min, max and count of every numeric figure, per system."""
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in samples.items():
        good = [r for r in runs if "error" not in r]
        figures: dict[str, Any] = {"runs": len(good)}
        errors = [r["error"] for r in runs if "error" in r]
        if errors:
            figures["errors"] = errors
        for key in sorted({k for r in good for k, v in r.items() if isinstance(v, int | float)}):
            values = [r[key] for r in good if key in r]
            figures[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
        summary[name] = figures
    return summary


def _median(summary: dict[str, Any], name: str, key: str) -> float | None:
    figure = summary.get(name, {}).get(key)
    return None if figure is None else float(figure["median"])


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, as ratios measured in this run."""
    s = results["summary"]
    rows: list[dict[str, Any]] = []

    def ratio(label: str, top: tuple[str, str], bottom: tuple[str, str], goal: float) -> None:
        a, b = _median(s, *top), _median(s, *bottom)
        value = None if a is None or b is None or b == 0 else a / b
        row = {"target": label, "measured": value, "goal": f">= {goal:g}x", "ok": _ok(value, goal)}
        # Rounds are interleaved: round i of one system ran next to round i of the other.
        tops = [r.get(top[1]) for r in results.get("samples", {}).get(top[0], [])]
        bottoms = [r.get(bottom[1]) for r in results.get("samples", {}).get(bottom[0], [])]
        per_round = [x / y for x, y in zip(tops, bottoms, strict=False) if x and y]
        if per_round:
            row["rounds"] = [min(per_round), statistics.median(per_round), max(per_round)]
        rows.append(row)

    huey, sqlite, pool = "Huey MemoryHuey", "Huey SqliteHuey", LIMIT_NAMES[0]
    ratio("memory drain / Huey MemoryHuey drain", (MAIN, "drain"), (huey, "drain"), 1.5)
    ratio("memory drain / bare ThreadPoolExecutor(4)", (MAIN, "drain"), (pool, "drain"), 0.5)
    ratio("JSON fsync=True drain / SqliteHuey drain", (JSON_FSYNC, "drain"), (sqlite, "drain"), 2)
    ratio(
        "JSON fsync=True enqueue, 8 producer threads / SqliteHuey, 8 producer threads",
        (JSON_FSYNC, "enqueue_8t"),
        (sqlite, "enqueue_8t"),
        1,
    )
    pg = "backrun PostgreSQL"
    ratio(
        "PostgreSQL drain / Procrastinate drain (async task, its fastest)",
        (pg, "drain"),
        ("Procrastinate PostgreSQL, async task", "drain"),
        2,
    )
    ratio(
        "PostgreSQL drain / Procrastinate drain (sync task, like backrun's handler)",
        (pg, "drain"),
        ("Procrastinate PostgreSQL, sync task", "drain"),
        2,
    )
    paired = _median(s, JSON_FSYNC, "paired_ratio")
    rows.append(
        {
            "target": "JSON fsync=True enqueue, 4 producers / durable write, 4 threads "
            "(paired 1-s bursts in one process)",
            "measured": paired,
            "goal": ">= 0.8x",
            "ok": _ok(paired, 0.8),
        }
    )
    ratio(
        "the same, from the separate trials (enqueue_4t / limit row)",
        (JSON_FSYNC, "enqueue_4t"),
        (LIMIT_NAMES[2], "rate"),
        0.8,
    )
    ratio(
        "JSON fsync=True enqueue, 1 producer / durable write, 1 thread",
        (JSON_FSYNC, "enqueue"),
        (LIMIT_NAMES[1], "rate"),
        0.9,
    )
    p50 = _median(s, MAIN, "pickup_p50_ms")
    rows.append(
        {
            "target": "pickup p50, backrun memory (in-process), ms",
            "measured": p50,
            "goal": "<= 1 ms",
            "ok": None if p50 is None else p50 <= 1.0,
        }
    )
    backlog = (results.get("rss_growth") or {}).get("backlog") or {}
    extra = backlog.get("extra_mb")
    rows.append(
        {
            "target": f"worker RSS with {backlog.get('jobs', 0):,} jobs waiting - empty "
            "(JSON store), MB",
            "measured": extra,
            "goal": "<= 20 MB",
            "ok": None if extra is None else extra <= 20.0,
        }
    )
    for mode, how in (("steady", "fed steadily"), ("prefilled", "all waiting at the start")):
        rss = (results.get("rss_growth") or {}).get(mode) or {}
        growth = rss.get("growth_mb")
        rows.append(
            {
                "target": f"worker RSS growth over {rss.get('jobs', 0):,} jobs {how} "
                "(JSON store), MB",
                "measured": growth,
                "goal": "<= 10 MB",
                "ok": None if growth is None else growth <= 10.0,
            }
        )
    return rows


def _ok(value: float | None, goal: float) -> bool | None:
    return None if value is None else value >= goal


def _cell(figure: dict[str, float] | None, digits: int) -> str:
    if figure is None:
        return DASH
    fmt = f"{{:,.{digits}f}}"
    med, low, high = (fmt.format(figure[k]) for k in ("median", "min", "max"))
    return med if low == high else f"{med} ({low}{DASH}{high})"


def _digits(key: str, value: float) -> int:
    if not key.endswith("_ms"):
        return 0
    return 2 if value < 10 else 1 if value < 100 else 0


def main_rows(results: dict[str, Any]) -> list[list[str]]:
    summary = results["summary"]
    rows = [["System", *(t for _, t in RATE_COLUMNS + TIME_COLUMNS), "Worker RSS MB"]]
    for name, figures in summary.items():
        if name in LIMIT_NAMES[1:]:
            continue
        row = [name]
        for key, _ in RATE_COLUMNS + TIME_COLUMNS:
            figure = figures.get(key)
            row.append(_cell(figure, _digits(key, figure["median"]) if figure else 0))
        row.append(_cell(figures.get("rss_mb"), 0))
        if figures.get("errors"):
            row[0] += f" ({len(figures['errors'])} failed)"
        rows.append(row)
    return rows


def limit_rows(results: dict[str, Any]) -> list[list[str]]:
    summary = results["summary"]
    rows = [["Machine limit", "Per second"]]
    for name in LIMIT_NAMES:
        figures = summary.get(name, {})
        rows.append([name, _cell(figures.get("drain") or figures.get("rate"), 0)])
    return rows


def durable_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = [
        [
            "Store",
            "Enqueue, 1 producer /s",
            "Enqueue, 4 producer threads /s",
            "Paired: enqueue, 4 threads /s",
            "Paired: durable write, 4 threads /s",
        ]
    ]
    for name, figures in results["summary"].items():
        if "enqueue_4t" in figures:
            keys = ("enqueue", "enqueue_4t", "paired_enqueue_4t", "paired_limit_4t")
            rows.append([name, *(_cell(figures.get(k), 0) for k in keys)])
    return rows


def target_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = [["Target", "Measured", "Per round min-median-max", "Goal", "Met"]]
    for t in results["targets"]:
        value = t["measured"]
        shown = DASH if value is None else f"{value:.2f}" + ("x" if "x" in t["goal"] else "")
        rounds = t.get("rounds")
        spread = DASH if not rounds else DASH.join(f"{r:.2f}" for r in rounds)
        met = {True: "yes", False: "**no**", None: DASH}[t["ok"]]
        rows.append([t["target"], shown, spread, t["goal"], met])
    return rows


def scaling_rows(results: dict[str, Any]) -> list[list[str]]:
    scaling = results.get("scaling") or {}
    data = scaling.get("rows") or []
    if not data:
        return []
    threads = sorted({int(k[6:-1]) for r in data for k in r if k.startswith("drain_")})
    rows = [
        [
            "Store",
            "Finished jobs in store",
            "Claim p50 µs",
            "Claim p99 µs",
            *(f"Drain, {t} thread{'s' if t > 1 else ''} /s" for t in threads),
        ]
    ]
    for r in data:
        rows.append(
            [
                r["store"],
                f"{r['finished_before']:,}",
                f"{r['claim_p50_us']:,.0f}",
                f"{r['claim_p99_us']:,.0f}",
                *(f"{r.get(f'drain_{t}t', 0):,.0f}" for t in threads),
            ]
        )
    return rows


def _md(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n"


def _plain(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        pairs = zip(row, widths, strict=True)
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(pairs)]
        out.append("  ".join(cells))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out).replace("**", "") + "\n"


def header(results: dict[str, Any]) -> str:
    m, st, load = results["machine"], results["settings"], results["load_1min"]
    return (
        f"{results['date']}, {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, "
        f"Linux {m['kernel']}, Python {m['python']}, stores on {m['workdir_fs']}; "
        f"1-min load {load['min']:.1f}{DASH}{load['max']:.1f} during the run.\n"
        f"{st['jobs']:,} no-op jobs per phase (at most {st['cap_seconds']:g} s per phase), "
        f"4 workers, 1 producer, {st['latency_jobs']} pickup samples; median of "
        f"{st['repeat']} interleaved runs (min{DASH}max). Command: `{st['command']}`\n"
    )


def _sections(results: dict[str, Any], table: Any) -> list[str]:
    parts = [header(results), table(main_rows(results)), table(limit_rows(results))]
    parts.append(table(durable_rows(results)))
    parts.append(table(target_rows(results)))
    for mode, rss in (results.get("rss_growth") or {}).items():
        if "growth_mb" in rss:
            parts.append(
                f"Worker RSS over {rss['jobs']:,} jobs, {mode} (JSON store, fsync=True, default "
                f"middleware): {rss['baseline_mb']:.1f} MB after the first 5%, peak "
                f"{rss['peak_mb']:.1f} MB, growth {rss['growth_mb']:+.1f} MB; "
                f"{rss['rate']:,.0f} jobs/s.\n"
            )
        elif rss.get("error"):
            parts.append(f"Worker RSS run ({mode}) failed: {rss['error']}\n")
    parts.append(table(scaling_rows(results)))
    for name, reason in (results.get("skipped") or {}).items():
        parts.append(f"Skipped {name}: {reason}\n")
    return [p for p in parts if p]


def text(results: dict[str, Any]) -> str:
    return "\n".join(_sections(results, _plain))


def markdown(results: dict[str, Any]) -> str:
    return "\n".join(_sections(results, _md))
