"""A/B durable enqueue rate of the JSON store: this tree against another, interleaved.

Each round runs one child process per tree (the tree picked by PYTHONPATH),
alternating the order, so both see the same disk and machine load. A child
opens ``JsonFileStorage(fsync=True)`` under an Engine (no worker started),
then alternates ``--bursts`` pairs of bursts of ``--burst`` seconds: one
producer calling ``engine.enqueue`` of a no-op job, then the bare durable
write (a temporary file written and fsynced, ``os.replace`` into ``ready/``,
fsync of ``ready/``: ``benchmarks/_peers/limits.py``'s ``durable_write``).
The disk's rate moves within minutes with other processes' traffic, so each
child reports its own enqueue/disk ratio, measured in the same seconds.
``--store`` times the store's own ``add`` of a ready-made job instead of
``engine.enqueue`` (what the store costs, without the engine's).

Usage: python benchmarks/json_enqueue_ab.py --other /work/main [--rounds 3] [--bursts 3] [--store]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = """
import json, os, shutil, sys, tempfile, time
from datetime import UTC, datetime
import backrun
from backrun.jobs import Job, new_job_id
from pydantic import BaseModel
from backrun.storage.jsonfile import JsonFileStorage

burst, bursts, base, store_only = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
sys.path.insert(0, sys.argv[5])  # benchmarks/_peers: the limit is measured the same way
from limits import durable_write as bare_durable_write
root = tempfile.mkdtemp(dir=base)
store = JsonFileStorage(root + "/s", fsync=True)
engine = backrun.Engine(store, threads=1)
disk = root + "/disk"
os.makedirs(disk + "/tmp")
os.makedirs(disk + "/ready")

class Empty(BaseModel):
    pass

@engine.handler(name="noop")
def noop(payload: Empty) -> None:
    return None

def durable_write(name):
    bare_durable_write(disk, name)

def timed(step):
    count = 0
    started = time.perf_counter()
    deadline = started + burst
    while True:
        step(count)
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)

def add(i):
    now = datetime.now(UTC)
    store.add(Job(id=new_job_id(), handler="noop", payload={}, run_at=now, created_at=now))

step = add if store_only == "1" else (lambda i: engine.enqueue(noop, {}))
for n in range(50):  # warm up: imports, directories, caches
    step(n)
enqueue, write = [], []
for n in range(bursts):
    enqueue.append(timed(step))
    write.append(timed(lambda i, n=n: durable_write(f"{n}-{i}")))
engine.close()
shutil.rmtree(root)
print(json.dumps({"enqueue": enqueue, "disk": write}))
"""


def run(
    tree: str, burst: float, bursts: int, base: str, store_only: bool
) -> dict[str, list[float]]:
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(burst),
            str(bursts),
            base,
            str(int(store_only)),
            str(Path(__file__).resolve().parent / "_peers"),
        ],
        env=env,
        cwd=base,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, list[float]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _span(values: list[float], digits: int = 2) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"min {low:.{digits}f} median {mid:.{digits}f} max {high:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", required=True, help="the tree to compare with, e.g. main")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bursts", type=int, default=3, help="enqueue/disk burst pairs per child")
    parser.add_argument("--burst", type=float, default=1.5, help="seconds per burst")
    parser.add_argument("--dir", default=None, help="where the stores go (default: the cwd)")
    parser.add_argument("--store", action="store_true", help="time store.add, not engine.enqueue")
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parents[1])
    base = os.path.abspath(args.dir or ".")
    ab: list[float] = []
    to_disk: dict[str, list[float]] = {here: [], args.other: []}
    for n in range(args.rounds):
        order = [here, args.other] if n % 2 == 0 else [args.other, here]
        rates = {tree: run(tree, args.burst, args.bursts, base, args.store) for tree in order}
        for tree, result in rates.items():
            # Burst by burst: each enqueue burst against the disk burst right after it.
            to_disk[tree] += [e / d for e, d in zip(result["enqueue"], result["disk"], strict=True)]
        this, other = rates[here], rates[args.other]
        ab.append(statistics.median(this["enqueue"]) / statistics.median(other["enqueue"]))
        print(
            f"round {n + 1}: this {statistics.median(this['enqueue']):.0f}/s"
            f" (disk {statistics.median(this['disk']):.0f}/s),"
            f" other {statistics.median(other['enqueue']):.0f}/s"
            f" (disk {statistics.median(other['disk']):.0f}/s)"
        )
    print(f"enqueue this/other: {_span(ab)}")
    print(f"enqueue/disk, this:  {_span(to_disk[here])}")
    print(f"enqueue/disk, other: {_span(to_disk[args.other])}")


if __name__ == "__main__":
    main()
