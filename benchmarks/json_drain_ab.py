"""A/B drain rate of the JSON store: this tree against another, interleaved.

Each round runs one child process per tree (the tree picked by PYTHONPATH),
alternating the order, so both see the same disk and machine load. A child
fills a store with ``--jobs`` no-op jobs (``fsync=False``, not measured), then
drains it with an Engine over ``JsonFileStorage(fsync=True)``, 4 threads and
the default middleware, and prints jobs per second.

Usage: python benchmarks/json_drain_ab.py --other /work/main [--rounds 3] [--jobs 3000]
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

jobs = int(sys.argv[1])
root = tempfile.mkdtemp(dir=sys.argv[2])
filler = backrun.Engine(JsonFileStorage(root + "/s", fsync=False), threads=1)

class Empty(BaseModel):
    pass

@filler.handler(name="noop")
def noop(payload: Empty) -> None:
    return None

for _ in range(jobs):
    filler.enqueue(noop, {})
filler.close()
engine = backrun.Engine(JsonFileStorage(root + "/s", fsync=True), threads=4)
engine.handler(name="noop")(noop)
started = time.perf_counter()
ran = engine.run_until_idle(timeout=600)
elapsed = time.perf_counter() - started
assert ran == jobs, (ran, jobs)
engine.close()
shutil.rmtree(root)
print(jobs / elapsed)
"""


def run(tree: str, jobs: int, base: str, child: str = _CHILD) -> float:
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run(
        [sys.executable, "-c", child, str(jobs), base],
        env=env,
        cwd=base,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main(child: str = _CHILD, description: str = __doc__ or "") -> None:
    """Run ``child`` (argv: jobs, store directory; prints jobs/s) for both trees, interleaved."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--other", required=True, help="the tree to compare with, e.g. main")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--dir", default=None, help="where the stores go (default: the cwd)")
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parents[1])
    base = os.path.abspath(args.dir or ".")
    ratios: list[float] = []
    for n in range(args.rounds):
        order = [here, args.other] if n % 2 == 0 else [args.other, here]
        rates = {tree: run(tree, args.jobs, base, child) for tree in order}
        ratios.append(rates[here] / rates[args.other])
        print(f"round {n + 1}: this {rates[here]:.0f}/s, other {rates[args.other]:.0f}/s")
    print(
        f"ratio this/other: min {min(ratios):.2f} median {statistics.median(ratios):.2f}"
        f" max {max(ratios):.2f}"
    )


if __name__ == "__main__":
    main()
