"""Plot a compare.py result: drain rate and pickup latency per system (peers' venv).

Usage: plot.py RESULTS.json  (writes RESULTS.png beside it)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

LIMIT = "bare ThreadPoolExecutor(4)"


def colour(name: str) -> str:
    if name.startswith("backrun"):
        return "#1f77b4"
    return "#7f7f7f" if name == LIMIT else "#ff9f40"


def main() -> None:
    source = Path(sys.argv[1])
    results: dict[str, Any] = json.loads(source.read_text())
    summary = results["summary"]
    drains = [(n, f["drain"]) for n, f in summary.items() if "drain" in f]
    drains.sort(key=lambda item: item[1]["median"])
    pickups = [(n, f) for n, f in summary.items() if "pickup_p50_ms" in f]
    pickups.sort(key=lambda item: -item[1]["pickup_p50_ms"]["median"])

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.42 * len(drains) + 2.2))
    names = [n for n, _ in drains]
    med = [d["median"] for _, d in drains]
    err = [[d["median"] - d["min"] for _, d in drains], [d["max"] - d["median"] for _, d in drains]]
    left.barh(names, med, xerr=err, color=[colour(n) for n in names], capsize=3)
    left.set_xscale("log")
    left.set_xlabel("jobs/s (log scale; bar = median, whisker = min-max)")
    left.set_title("Drain rate of a pre-filled queue, 4 workers (higher is better)")
    for y, (_, d) in enumerate(drains):
        left.text(d["max"] * 1.12, y, f"{d['median']:,.0f}", va="center", fontsize=8)
    left.set_xlim(right=max(med) * 6)

    names = [n for n, _ in pickups]
    p50 = [f["pickup_p50_ms"]["median"] for _, f in pickups]
    p99 = [f["pickup_p99_ms"]["median"] for _, f in pickups]
    ys = range(len(names))
    right.barh([y + 0.2 for y in ys], p99, height=0.4, color="#d0d0d0", label="p99")
    right.barh(
        [y - 0.2 for y in ys], p50, height=0.4, color=[colour(n) for n in names], label="p50"
    )
    right.set_yticks(list(ys), names)
    right.set_xscale("log")
    right.set_xlabel("ms from enqueue call to handler start (log scale)")
    right.set_title("Pickup latency, idle workers (lower is better)")
    right.axvline(1.0, color="#2ca02c", linestyle="--", linewidth=1)
    for y, value in enumerate(p50):
        label = f"{value:.0f}" if value >= 10 else f"{value:.2g}"
        right.text(value * 1.08, y - 0.2, label, va="center", fontsize=8)
    right.set_xlim(right=max(p99) * 4)
    handles = [
        Patch(color=colour("backrun"), label="backrun (p50)"),
        Patch(color=colour("peer"), label="peer (p50)"),
        Patch(color="#d0d0d0", label="p99"),
    ]
    right.legend(handles=handles, loc="upper right", fontsize=8)

    m, st = results["machine"], results["settings"]
    fig.suptitle(
        f"{st['jobs']:,} no-op jobs, median of {st['repeat']}; {results['date'][:10]}, "
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(source.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
