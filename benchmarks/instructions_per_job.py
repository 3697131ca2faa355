"""CPU instructions per drained job on the memory store, counted by valgrind (callgrind).

Unlike a rate, an instruction count does not depend on the machine's load, so
one run per tree answers "did this change make the worker's path cheaper".
Each measurement runs two children under ``valgrind --tool=callgrind``: one
fills ``--jobs`` jobs and exits, the other fills the same jobs and drains them
with ``run_until_idle``. The main figure is what the drain's slot threads
executed, divided by the jobs: claim, chain, handler, outcome, metrics, next
claim. The other threads are left out of it: the main thread (imports, fill,
the idle wait's polling) and the supervisor wake on timers, so their counts
grow with the run's wall time, which under valgrind depends on the machine's
load (the supervisor alone moved by several thousand instructions per job
between runs). They are printed apart, with the older figure (drain minus
fill over all threads). MemoryHuey's figure is all its consumer threads.

    .venv/bin/python benchmarks/instructions_per_job.py                     # this tree
    .venv/bin/python benchmarks/instructions_per_job.py --other ../main     # and another tree
    .venv/bin/python benchmarks/instructions_per_job.py --huey              # and MemoryHuey
    .venv/bin/python benchmarks/instructions_per_job.py --keep /tmp/cg      # keep callgrind.out

The tree is chosen by ``PYTHONPATH``: run it with an interpreter where backrun
is importable. ``--huey`` uses the peers' venv (``benchmarks/.venv-peers``).
valgrind runs one thread at a time: lock convoys do not show here.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _child_backrun(jobs: int, threads: int, mode: str, middleware: str) -> None:
    from pydantic import BaseModel

    import backrun

    class Stamp(BaseModel):
        t0: float = 0.0

    options: dict[str, object] = {} if middleware == "default" else {"middleware": []}
    engine = backrun.Engine(backrun.MemoryStorage(), threads=threads, **options)  # type: ignore[arg-type]
    done = [0]

    def noop(payload: Stamp) -> None:
        done[0] += 1

    engine.add_handler(noop, name="noop")
    for _ in range(jobs):
        engine.enqueue("noop", Stamp(t0=0.0))
    if mode == "drain":
        engine.run_until_idle(timeout=3600)
        assert done[0] == jobs, done
    engine.close()


def _child_huey(jobs: int, mode: str) -> None:
    import logging
    import threading

    from huey import MemoryHuey  # type: ignore[import-not-found]

    logging.getLogger("huey").setLevel(logging.WARNING)
    huey = MemoryHuey("bench")
    done = [0]
    finished = threading.Event()
    lock = threading.Lock()

    @huey.task()  # type: ignore[misc]
    def noop(enqueued_at: float) -> None:
        with lock:
            done[0] += 1
            if done[0] >= jobs:
                finished.set()

    for _ in range(jobs):
        noop(0.0)
    if mode == "drain":
        consumer = huey.create_consumer(workers=4, worker_type="thread", periodic=False)
        consumer.start()
        finished.wait(3600)
        consumer.stop(graceful=True)


def _valgrind(python: str, args: list[str], env: dict[str, str], out: str) -> int:
    """Run ``args`` under callgrind, one profile per thread; return the total collected."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",
        f"--callgrind-out-file={out}",
        python,
        __file__,
        *args,
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or found is None:
        raise SystemExit(f"{' '.join(command)} failed:\n{run.stderr[-3000:]}")
    return int(found.group(1))


def _thread_totals(prefix: str) -> dict[int, int]:
    """Instructions per thread (1 is the main thread) from callgrind's per-thread files."""
    totals: dict[int, int] = {}
    for path in Path(prefix).parent.glob(Path(prefix).name + "-*"):
        text = path.read_text(errors="replace")
        found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
        thread = re.search(r"^thread: (\d+)", text, re.MULTILINE)
        if found and thread:
            totals[int(thread.group(1))] = int(found.group(1))
    return totals


def _per_job(
    python: str, child: list[str], env: dict[str, str], jobs: int, keep: str
) -> tuple[dict[int, float], float]:
    """(instructions per job of each drain thread, whole drain minus whole fill per job)."""
    with tempfile.TemporaryDirectory() as tmp:
        fill = _valgrind(python, [*child, "fill"], env, f"{tmp}/fill")
        drain = _valgrind(python, [*child, "drain"], env, f"{tmp}/drain")
        threads = _thread_totals(f"{tmp}/drain")
        if keep:
            for path in Path(tmp).glob("drain-*"):
                shutil.copy(path, f"{keep}{path.name[len('drain') :]}")
    return {thread: total / jobs for thread, total in threads.items()}, (drain - fill) / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--threads", default="1,4", help="comma-separated slot counts")
    parser.add_argument("--middleware", choices=("default", "none"), default="default")
    parser.add_argument("--other", action="append", default=[], help="another tree (repeatable)")
    parser.add_argument("--no-this", action="store_true", help="measure only the --other trees")
    parser.add_argument("--huey", action="store_true", help="also MemoryHuey (4 thread workers)")
    parser.add_argument("--keep", default="", help="path prefix for the drains' profiles")
    parser.add_argument("--peers-python", default=str(HERE / ".venv-peers/bin/python"))
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "huey":
            _child_huey(int(rest[0]), rest[1])
        else:
            _child_backrun(int(rest[0]), int(rest[1]), rest[3], rest[2])
        return
    trees = [] if args.no_this else [("this", str(HERE.parent))]
    trees += [(f"other{i}", str(Path(tree).resolve())) for i, tree in enumerate(args.other)]
    for name, tree in trees:
        env = {**os.environ, "PYTHONPATH": tree}
        for threads in (int(t) for t in args.threads.split(",")):
            child = ["--child", "backrun", str(args.jobs), str(threads), args.middleware]
            keep = f"{args.keep}.{name}.{threads}" if args.keep else ""
            by_thread, whole = _per_job(sys.executable, child, env, args.jobs, keep)
            # Thread 1 is the main thread; the slots start next, then the supervisor.
            slots = sum(by_thread.get(t, 0.0) for t in range(2, 2 + threads))
            others = sum(v for t, v in by_thread.items() if t != 1) - slots
            print(f"{name:6} {tree}: {threads} slot(s), {args.middleware} middleware: "
                  f"{slots / 1000:.1f}k instructions per job in slot threads; other worker "
                  f"threads {others / 1000:.1f}k (time-dependent); drain - fill over all "
                  f"threads {whole / 1000:.1f}k", flush=True)  # fmt: skip
    if args.huey:
        if not Path(args.peers_python).exists():
            raise SystemExit(f"no {args.peers_python}: run compare.py once, or pass --peers-python")
        keep = f"{args.keep}.huey" if args.keep else ""
        child = ["--child", "huey", str(args.jobs)]
        by_thread, whole = _per_job(args.peers_python, child, dict(os.environ), args.jobs, keep)
        workers = sum(v for t, v in by_thread.items() if t != 1)
        print(f"MemoryHuey, 4 workers: {workers / 1000:.1f}k instructions per job in consumer "
              f"threads; drain - fill, all threads {whole / 1000:.1f}k", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
