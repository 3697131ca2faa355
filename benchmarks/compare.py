"""backrun next to the job libraries a user would pick instead, and the machine's limits.

One command, run with the project's interpreter::

    .venv/bin/python benchmarks/compare.py            # ~10 minutes on 2 cores
    .venv/bin/python benchmarks/compare.py --jobs 500 --repeat 1 --quick   # smoke, < 2 min

It makes its own virtual environment for the peers (``benchmarks/.venv-peers``:
Huey, Dramatiq, RQ, Celery, Procrastinate, redis, matplotlib; never backrun's
dependencies),
then runs the same workload on every system, each trial in a fresh process,
repeats interleaved so machine drift hits all alike: N no-op jobs, 4 workers,
one producer; enqueue, drain and end-to-end rates, pickup latency, worker RSS.
Redis peers need Redis on 127.0.0.1:6379 (db 12 by default, which must be
empty and is emptied after each trial); backrun's PostgreSQL mode and
Procrastinate need ``postgresql://postgres@127.0.0.1:5432/test`` (a fresh
schema per trial).
Either is skipped with the reason when it does not answer.

Writes ``benchmarks/results/<date>.json``, ``<date>.md`` and ``<date>.png``.
See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS = HERE / "_peers"
VENV = HERE / ".venv-peers"
RESULTS = HERE / "results"
sys.path.insert(0, str(PEERS))

import _report  # noqa: E402  (lives in _peers/, found through the path set just above)

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class System:
    """One row of the table: a script and its variant, run in one of the two venvs."""

    name: str
    script: str
    variant: str
    peers: bool = False  # run with the peers' venv, not the project's
    needs: str | None = None  # "redis" or "postgres"
    extra: tuple[str, ...] = field(default=())


FOUR_PRODUCERS = ("--enqueue-threads", "4")
EIGHT_PRODUCERS = ("--more-enqueue-threads", "8")
SYSTEMS = [
    System("backrun memory", "backrun_trial.py", "memory"),
    System(
        "backrun JSON fsync",
        "backrun_trial.py",
        "json-fsync",
        extra=FOUR_PRODUCERS + EIGHT_PRODUCERS,
    ),
    System("backrun JSON no-fsync", "backrun_trial.py", "json-nofsync"),
    System(
        "backrun PostgreSQL",
        "backrun_trial.py",
        "postgres",
        needs="postgres",
        extra=FOUR_PRODUCERS,
    ),
    System("Huey MemoryHuey", "huey_trial.py", "memory", peers=True),
    System("Huey SqliteHuey", "huey_trial.py", "sqlite", peers=True, extra=EIGHT_PRODUCERS),
    System("Huey FileHuey", "huey_trial.py", "file", peers=True),
    System("Dramatiq StubBroker", "dramatiq_trial.py", "stub", peers=True),
    System("Dramatiq Redis", "dramatiq_trial.py", "redis", peers=True, needs="redis"),
    System("RQ Redis, 4 SimpleWorkers", "rq_trial.py", "redis", peers=True, needs="redis"),
    System("Celery Redis, threads x4", "celery_trial.py", "redis", peers=True, needs="redis"),
    System(
        "Procrastinate PostgreSQL, async task",
        "procrastinate_trial.py",
        "async",
        peers=True,
        needs="postgres",
    ),
    System(
        "Procrastinate PostgreSQL, sync task",
        "procrastinate_trial.py",
        "sync",
        peers=True,
        needs="postgres",
    ),
]
LIMITS = {
    "bare ThreadPoolExecutor(4)": ("pool",),
    "durable write, 1 thread": ("fsync", "--threads", "1"),
    "durable write, 4 threads": ("fsync", "--threads", "4"),
    "rename between directories": ("rename",),
}


# -- environment ----------------------------------------------------------------


_PEER_PYTHON: list[Path] = []  # set by --peers-python


def peer_python() -> Path:
    return _PEER_PYTHON[0] if _PEER_PYTHON else VENV / "bin" / "python"


def ensure_peer_venv() -> None:
    """Create or update benchmarks/.venv-peers from _peers/requirements.txt."""
    if _PEER_PYTHON:
        return
    requirements = PEERS / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    marker = VENV / ".requirements.sha256"
    if marker.exists() and marker.read_text() == digest and peer_python().exists():
        return
    print(f"setting up the peers' virtual environment in {VENV} ...", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(peer_python()), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True
    )
    marker.write_text(digest)


def redis_problem(url: str) -> str | None:
    """Why the Redis peers cannot run, or None."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            if not conn.recv(64).startswith(b"+PONG"):
                return "Redis on 127.0.0.1:6379 did not answer PING"
    except OSError as exc:
        return f"no Redis on 127.0.0.1:6379 ({exc})"
    probe = "import redis, sys; print(redis.Redis.from_url(sys.argv[1]).dbsize())"
    out = subprocess.run(
        [str(peer_python()), "-c", probe, url], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        return f"cannot use {url}: {out.stderr.strip()[-200:]}"
    if int(out.stdout.strip() or 0) > 0:
        return f"{url} is not empty; the benchmark empties it, so give an empty db (--redis-url)"
    return None


def postgres_problem() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure means: skip, and say why
        return f"no PostgreSQL at {PG_DSN} ({type(exc).__name__}: {str(exc).strip()[:120]})"
    return None


def machine(workdir: str) -> dict[str, Any]:
    import platform

    cpu = "unknown cpu"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        mem_kb = int(info.readline().split()[1])
    fs = "?"
    with open("/proc/mounts") as mounts:
        best = ""
        for line in mounts:
            _, point, kind, *_ = line.split()
            if workdir.startswith(point) and len(point) > len(best):
                best, fs = point, kind
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "workdir_fs": fs,
    }


# -- running --------------------------------------------------------------------


def run_script(python: Path | str, script: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run one trial process; return its RESULT line as a dict (``error`` on failure)."""
    command = [str(python), str(PEERS / script), *args]
    # A session of its own, so a timeout also ends the trial's worker processes.
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return {"error": f"timed out after {timeout:.0f} s"}
        except BaseException:  # interrupted: take the trial and its workers down too
            os.killpg(process.pid, signal.SIGKILL)
            raise
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    tail = (stderr or stdout).strip().splitlines()[-3:]
    return {"error": f"exit {process.returncode}: " + " | ".join(tail)[-400:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per phase (default 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats, interleaved (default 3)")
    parser.add_argument("--cap", type=float, default=None, help="seconds per phase at most")
    parser.add_argument("--latency-jobs", type=int, default=None)
    parser.add_argument("--rss-jobs", type=int, default=None, help="default 100000")
    parser.add_argument(
        "--backlog-jobs", type=int, default=100_000, help="waiting jobs for the RSS backlog row"
    )
    parser.add_argument(
        "--scaling", action="store_true", help="add the scaling run and the pre-filled RSS run"
    )
    parser.add_argument("--quick", action="store_true", help="small phases and scaling (smoke)")
    parser.add_argument("--only", default=None, help="comma-separated names (substring match)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--workdir", default=None, help="where stores go (default: a temp dir)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default benchmarks/results (with --quick: a temp dir)",
    )
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--peers-python",
        type=Path,
        default=None,
        help="an interpreter that has the peers installed (instead of benchmarks/.venv-peers)",
    )
    args = parser.parse_args()
    quick = args.quick
    if args.peers_python is not None:
        _PEER_PYTHON.append(args.peers_python)
    if args.out is None:  # a smoke run must not overwrite the day's measured results
        args.out = Path(tempfile.gettempdir()) / "backrun-bench-quick" if quick else RESULTS
    cap = args.cap if args.cap is not None else (1.0 if quick else 4.0)
    latency_jobs = args.latency_jobs or (100 if quick else 500)
    rss_jobs = args.rss_jobs or (2_000 if quick else 100_000)
    began = time.monotonic()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: trials get killed
    ensure_peer_venv()
    workdir = tempfile.mkdtemp(prefix="backrun-bench-", dir=args.workdir)
    skipped: dict[str, str] = {}
    problems = {"redis": redis_problem(args.redis_url), "postgres": postgres_problem()}
    systems = []
    for system in SYSTEMS:
        if args.only and not any(p.strip() in system.name for p in args.only.split(",")):
            continue
        problem = problems.get(system.needs or "")
        if problem:
            skipped[system.name] = problem
            print(f"skipping {system.name}: {problem}", flush=True)
        else:
            systems.append(system)
    common = ["--jobs", str(args.jobs), "--latency-jobs", str(latency_jobs), "--cap", str(cap)]
    common += ["--workdir", workdir, "--redis-url", args.redis_url]
    samples: dict[str, list[dict[str, Any]]] = {}
    loads: list[float] = []
    trial_timeout = 120 + 8 * cap + latency_jobs * 0.05
    try:
        for round_ in range(args.repeat):
            order: list[tuple[str, Any]] = [(s.name, s) for s in systems]
            order += list(LIMITS.items())
            shift = round_ * 3 % len(order)
            for name, what in order[shift:] + order[:shift]:
                loads.append(os.getloadavg()[0])
                print(f"[{round_ + 1}/{args.repeat}] {name} ...", end=" ", flush=True)
                trial_began = time.monotonic()
                if isinstance(what, System):
                    python = peer_python() if what.peers else sys.executable
                    argv = [what.variant, *common, *what.extra]
                    result = run_script(python, what.script, argv, trial_timeout)
                else:
                    limit_args = [*what, "--jobs", str(args.jobs), "--cap", str(cap)]
                    result = run_script(
                        sys.executable, "limits.py", [*limit_args, "--workdir", workdir], 300
                    )
                result["seconds"] = round(time.monotonic() - trial_began, 1)
                print(
                    result.get("error") or _report.brief(result),
                    f"[{result['seconds']} s]",
                    flush=True,
                )
                samples.setdefault(name, []).append(result)
        with_scaling = args.scaling or quick
        rss = _rss_run(workdir, rss_jobs, prefilled=with_scaling, backlog=args.backlog_jobs)
        scaling = _scaling_run(workdir, quick) if with_scaling else None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    loads.append(os.getloadavg()[0])

    now = datetime.now(UTC)
    results = {
        "date": now.isoformat(timespec="seconds"),
        "machine": machine(args.workdir or tempfile.gettempdir()),
        "load_1min": {"min": min(loads), "max": max(loads), "samples": loads},
        "settings": {
            "jobs": args.jobs,
            "repeat": args.repeat,
            "cap_seconds": cap,
            "latency_jobs": latency_jobs,
            "rss_jobs": rss_jobs,
            "workers": 4,
            "quick": quick,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        },
        "skipped": skipped,
        "samples": samples,
        "summary": _report.summarize(samples),
        "rss_growth": rss,
        "scaling": scaling,
        "runtime_seconds": round(time.monotonic() - began),
    }
    results["targets"] = _report.targets(results)
    markdown = _report.markdown(results)
    print()
    print(_report.text(results))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / now.strftime("%Y-%m-%d")
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown)
    written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    if not args.no_plot:
        plot = subprocess.run(
            [str(peer_python()), str(PEERS / "plot.py"), str(stem.with_suffix(".json"))],
            capture_output=True,
            text=True,
            check=False,
        )
        if plot.returncode == 0:
            written.append(stem.with_suffix(".png"))
        else:
            print(f"plot failed: {plot.stderr.strip()[-300:]}")
    print("wrote " + ", ".join(str(p) for p in written))
    print(f"total {results['runtime_seconds']} s")


def _rss_run(workdir: str, jobs: int, prefilled: bool, backlog: int) -> dict[str, Any]:
    """A worker's RSS over ``jobs`` jobs fed steadily (and over a queue pre-filled with all)."""
    results: dict[str, Any] = {"backlog": _backlog_run(workdir, backlog)}
    script = str(PEERS / "backrun_rss.py")
    for mode in ("steady", "prefilled") if prefilled else ("steady",):
        path = os.path.join(workdir, f"rss-{mode}")
        print(f"worker RSS over {jobs:,} jobs, {mode} (JSON store) ...", end=" ", flush=True)
        feeder = None
        if mode == "prefilled":
            result = run_script(
                sys.executable, "backrun_rss.py", ["fill", path, "--jobs", str(jobs)], 1800
            )
        else:
            result = {}
            from backrun.storage.jsonfile import JsonFileStorage

            JsonFileStorage(path).close()  # made here, not raced for by the two processes
            feeder = subprocess.Popen([sys.executable, script, "feed", path, "--jobs", str(jobs)])
        if "error" not in result:
            argv = ["drain", path, "--jobs", str(jobs)]
            result = run_script(sys.executable, "backrun_rss.py", argv, 1800)
        if feeder is not None:
            feeder.kill()
            feeder.wait()
        shutil.rmtree(path, ignore_errors=True)
        print(result.get("error") or f"{result['growth_mb']:+.1f} MB", flush=True)
        results[mode] = result
    return results


def _backlog_run(workdir: str, jobs: int) -> dict[str, Any]:
    """A worker's peak RSS with ``jobs`` waiting, against the same worker on an empty store."""
    print(f"worker RSS with {jobs:,} jobs waiting vs empty (JSON store) ...", end=" ", flush=True)
    full, empty = os.path.join(workdir, "rss-backlog"), os.path.join(workdir, "rss-empty")
    result = run_script(sys.executable, "backrun_rss.py", ["fill", full, "--jobs", str(jobs)], 1800)
    if "error" in result:
        print(result["error"], flush=True)
        return result
    from backrun.storage.jsonfile import JsonFileStorage

    JsonFileStorage(empty).close()
    runs = {}
    for name, path in (("empty", empty), ("full", full)):
        runs[name] = run_script(sys.executable, "backrun_rss.py", ["backlog", path], 300)
        if "error" in runs[name]:
            print(runs[name]["error"], flush=True)
            return runs[name]
    shutil.rmtree(full, ignore_errors=True)
    shutil.rmtree(empty, ignore_errors=True)
    extra = runs["full"]["peak_mb"] - runs["empty"]["peak_mb"]
    print(f"{extra:+.1f} MB", flush=True)
    return {"jobs": jobs, "empty": runs["empty"], "full": runs["full"], "extra_mb": extra}


def _scaling_run(workdir: str, quick: bool) -> dict[str, Any]:
    levels = "100,1000" if quick else "1000,10000,100000"
    jobs = "200" if quick else "2000"
    threads = "1,4" if quick else "1,2,4,8"
    rows: list[Any] = []
    errors: dict[str, str] = {}
    for store in ("memory", "json"):
        print(f"scaling, {store} store, finished {levels} ...", end=" ", flush=True)
        argv = [store, "--levels", levels, "--jobs", jobs, "--threads", threads]
        argv += ["--workdir", workdir]
        result = run_script(sys.executable, "backrun_scaling.py", argv, 1800)
        if "error" in result:
            errors[store] = result["error"]
            print(result["error"], flush=True)
        else:
            rows += result["rows"]
            print("done", flush=True)
    return {"jobs": int(jobs), "rows": rows, "errors": errors}


if __name__ == "__main__":
    main()
