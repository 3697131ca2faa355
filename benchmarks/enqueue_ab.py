"""A/B enqueue rate: this tree against another, interleaved.

Each round runs one child process per tree and store (the tree picked by
PYTHONPATH), alternating the order, so both see the same machine load. A
child builds an Engine with the default middleware (tracing, Prometheus and
OpenTelemetry metrics, no SDK configured) over ``MemoryStorage`` or
``JsonFileStorage(fsync=False)``, enqueues ``--warmup`` jobs untimed, then
times ``--jobs`` calls of ``engine.enqueue(noop, Payload(...))`` and prints
enqueues per second. No worker runs.

Usage: python benchmarks/enqueue_ab.py --other /work/main [--rounds 5] [--jobs 20000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = """
import shutil, sys, tempfile, time
import backrun
from pydantic import BaseModel
from backrun.storage.jsonfile import JsonFileStorage
from backrun.storage.memory import MemoryStorage

store_kind, jobs, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
root = tempfile.mkdtemp(dir=sys.argv[4])
store = MemoryStorage() if store_kind == "memory" else JsonFileStorage(root + "/s", fsync=False)
engine = backrun.Engine(store, threads=1)

class Payload(BaseModel):
    user_id: int
    email: str
    tags: list[str] = []

@engine.handler(name="noop")
def noop(payload: Payload) -> None:
    return None

payload = Payload(user_id=42, email="someone@example.com", tags=["a", "b"])
for _ in range(warmup):
    engine.enqueue(noop, payload)
started = time.perf_counter()
for _ in range(jobs):
    engine.enqueue(noop, payload)
elapsed = time.perf_counter() - started
engine.close()
shutil.rmtree(root)
print(jobs / elapsed)
"""

STORES = ("memory", "json")


def run(tree: str, store: str, jobs: int, warmup: int, base: str) -> float:
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, store, str(jobs), str(warmup), base],
        env=env,
        cwd=base,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _spread(values: list[float], fmt: str) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"min {low:{fmt}} median {mid:{fmt}} max {high:{fmt}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", required=True, help="the tree to compare with, e.g. main")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--stores", default=",".join(STORES), help="memory,json")
    parser.add_argument("--dir", default=None, help="where the JSON stores go (default: the cwd)")
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parents[1])
    base = os.path.abspath(args.dir or ".")
    stores = [s for s in args.stores.split(",") if s]
    rates: dict[tuple[str, str], list[float]] = {}
    for n in range(args.rounds):
        for store in stores:
            order = [here, args.other] if n % 2 == 0 else [args.other, here]
            got = {tree: run(tree, store, args.jobs, args.warmup, base) for tree in order}
            rates.setdefault((store, here), []).append(got[here])
            rates.setdefault((store, args.other), []).append(got[args.other])
            print(
                f"round {n + 1} {store}: this {got[here]:.0f}/s, other {got[args.other]:.0f}/s"
                f" ({got[here] / got[args.other]:.2f}x)",
                flush=True,
            )
    for store in stores:
        this, other = rates[(store, here)], rates[(store, args.other)]
        ratios = [a / b for a, b in zip(this, other, strict=True)]
        print(f"{store}: this/s {_spread(this, '.0f')}; other/s {_spread(other, '.0f')}")
        print(f"{store}: ratio this/other {_spread(ratios, '.2f')}")
        print(f"{store}: this us/call {_spread([1e6 / r for r in this], '.1f')}")


if __name__ == "__main__":
    main()
