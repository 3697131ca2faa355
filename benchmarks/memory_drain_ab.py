"""A/B drain rate of the memory store: this tree against another, with MemoryHuey as reference.

Each round runs one child process per tree (the tree picked by PYTHONPATH),
plus one MemoryHuey child (the peers' interpreter), in an order that rotates
from round to round, so all see the same machine load. A backrun child fills
``Engine(MemoryStorage(), threads=4)`` (default middleware) with ``--jobs``
jobs of a no-op handler taking a pydantic model, as
``_peers/backrun_trial.py`` does, then starts the worker; the Huey child
fills a ``MemoryHuey`` and starts its 4-thread consumer, as
``_peers/huey_trial.py`` does. Both time the drain the way the trials do:
from the first handler start to the last (thread start-up left out), and
report the process CPU time and voluntary context switches per job too (the
CPU time is steadier than the rate on a busy machine; the switches show lock
convoys).

Usage: python benchmarks/memory_drain_ab.py --other /work/main [--rounds 5] [--jobs 10000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

_LEDGER = """
import resource, sys, threading, time
jobs = int(sys.argv[1])
stamps = []
done = threading.Event()

def record(t0):
    stamps.append(time.time())
    if len(stamps) >= jobs:
        done.set()

def rate(cpu0, switches0):
    assert done.wait(600), len(stamps)
    cpu = (time.process_time() - cpu0) / jobs * 1e6
    switches = (resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - switches0) / jobs
    return f"{(len(stamps) - 1) / max(max(stamps) - min(stamps), 1e-9)} {cpu} {switches}"
"""

_BACKRUN = (
    _LEDGER
    + """
import backrun
from pydantic import BaseModel

class Stamp(BaseModel):
    t0: float = 0.0

engine = backrun.Engine(backrun.MemoryStorage(), threads=4)

def noop(payload: Stamp) -> None:
    record(payload.t0)

engine.add_handler(noop, name="noop")
for _ in range(jobs):
    engine.enqueue("noop", Stamp(t0=0.0))
switches0 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
cpu0 = time.process_time()
with engine.running():
    print(rate(cpu0, switches0))
engine.close()
"""
)

_HUEY = (
    _LEDGER
    + """
import logging
from huey import MemoryHuey

logging.getLogger("huey").setLevel(logging.WARNING)
huey = MemoryHuey("bench")

@huey.task()
def noop(enqueued_at):
    record(enqueued_at)

for _ in range(jobs):
    noop(0.0)
consumer = huey.create_consumer(workers=4, worker_type="thread", periodic=False)
switches0 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
cpu0 = time.process_time()
consumer.start()
print(rate(cpu0, switches0))
consumer.stop(graceful=True)
"""
)

PEERS_VENV = Path("benchmarks") / ".venv-peers" / "bin" / "python"


def run(python: str, code: str, jobs: int, tree: str | None) -> tuple[float, float, float]:
    """(jobs/s, process CPU microseconds per job, voluntary context switches per job)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = tree
    else:
        env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [python, "-c", code, str(jobs)], env=env, check=True, capture_output=True, text=True
    )
    rate, cpu, switches = out.stdout.strip().splitlines()[-1].split()
    return float(rate), float(cpu), float(switches)


def spread(values: list[float], fmt: str) -> str:
    return " ".join(
        f"{name} {format(v, fmt)}"
        for name, v in (
            ("min", min(values)),
            ("median", statistics.median(values)),
            ("max", max(values)),
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", required=True, help="the tree to compare with, e.g. /work/main")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument(
        "--peers-python", help="Huey's interpreter (default: the peers' venv of either tree)"
    )
    parser.add_argument("--no-huey", action="store_true", help="leave out the MemoryHuey child")
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parents[1])
    children = {
        "this": (sys.executable, _BACKRUN, here),
        "other": (sys.executable, _BACKRUN, args.other),
    }
    if not args.no_huey:
        found = [str(Path(t) / PEERS_VENV) for t in (here, args.other)]
        peers = args.peers_python or next((p for p in found if os.path.exists(p)), found[0])
        children["huey"] = (peers, _HUEY, None)
    names = list(children)
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    for n in range(args.rounds):
        order = names[n % len(names) :] + names[: n % len(names)]
        got = {name: run(*children[name][:2], args.jobs, children[name][2]) for name in order}
        for name, (rate, cpu, _) in got.items():
            rates[name].append(rate)
            cpus[name].append(cpu)
        line = ", ".join(
            f"{name} {got[name][0]:,.0f}/s ({got[name][1]:.0f} us CPU, "
            f"{got[name][2]:.2f} switches /job)"
            for name in names
        )
        print(f"round {n + 1}: {line}", flush=True)
    ab = [t / o for t, o in zip(rates["this"], rates["other"], strict=True)]
    print(f"rate this:  {spread(rates['this'], ',.0f')}")
    print(f"rate other: {spread(rates['other'], ',.0f')}")
    print(f"ratio this/other: {spread(ab, '.2f')}")
    print(f"CPU us/job this:  {spread(cpus['this'], '.1f')}")
    print(f"CPU us/job other: {spread(cpus['other'], '.1f')}")
    if "huey" in rates:
        print(f"rate huey:  {spread(rates['huey'], ',.0f')}")
        print(f"CPU us/job huey:  {spread(cpus['huey'], '.1f')}")
        for name in ("this", "other"):
            vs = [b / h for b, h in zip(rates[name], rates["huey"], strict=True)]
            print(f"ratio {name}/MemoryHuey (same round): {spread(vs, '.2f')}")


if __name__ == "__main__":
    main()
