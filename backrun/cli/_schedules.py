"""``backrun schedules``: the engine's periodic jobs, their next run and their last tick's job."""

from __future__ import annotations

import argparse
import json
from typing import IO, Any

from backrun.engine import Engine
from backrun.schedules import Schedule

from ._common import EXIT_OK, table

__all__ = ["add_schedules_command", "cmd_schedules"]


def add_schedules_command(sub: Any, *, embedded: bool) -> None:
    """Register ``schedules`` on the CLI's subparsers."""
    parser = sub.add_parser(
        "schedules", help="periodic jobs: next run (in each schedule's zone) and last tick"
    )
    if not embedded:
        parser.add_argument(
            "--app",
            metavar="MODULE:ENGINE",
            help="the engine whose schedules to list (default: $BACKRUN_APP)",
        )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.set_defaults(run=cmd_schedules)


def _row(engine: Engine, schedule: Schedule) -> dict[str, Any]:
    last = schedule.last_tick_at
    job = engine.get(schedule.tick_id(last)) if last is not None else None
    return {
        "name": schedule.name,
        "handler": schedule.handler,
        "spec": schedule.spec,
        "tz": schedule.tz_name,
        "misfire": schedule.misfire,
        "queue": schedule.queue,
        "next_run_at": (
            schedule.next_run_at.astimezone(schedule.tz).isoformat()
            if schedule.next_run_at is not None
            else None
        ),
        "last_tick_at": last.astimezone(schedule.tz).isoformat() if last is not None else None,
        "last_job_id": job.id if job is not None else None,
        "last_job_state": job.state.value if job is not None else None,
    }


def cmd_schedules(engine: Engine, ns: argparse.Namespace, out: IO[str]) -> int:
    """``backrun schedules``: one line per schedule declared by the engine's code."""
    rows = [_row(engine, s) for s in engine.schedules()]
    if ns.json:
        out.write(json.dumps({"schedules": rows}, indent=2) + "\n")
        return EXIT_OK
    if not rows:
        out.write("no schedules (they are declared in code: engine.schedule(...))\n")
        return EXIT_OK
    lines = [["NAME", "HANDLER", "SCHEDULE", "TZ", "NEXT RUN", "LAST TICK", "LAST JOB"]]
    for r in rows:
        lines.append(
            [
                r["name"],
                r["handler"],
                r["spec"],
                r["tz"],
                r["next_run_at"] or "-",
                r["last_tick_at"] or "never",
                f"{r['last_job_state']} {r['last_job_id']}" if r["last_job_id"] else "-",
            ]
        )
    table(lines, out)
    return EXIT_OK
