"""``backrun workers`` and ``backrun queues pause|resume|list``: who works, what is paused."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import IO, Any

from backrun.engine import Engine

from ._common import EXIT_OK, EXIT_USAGE, CliError, format_age, table

__all__ = ["add_ops_commands"]

StoreOptions = Callable[..., None]


def add_ops_commands(
    sub: Any, store_options: StoreOptions, *, embedded: bool, parser_class: type[Any]
) -> None:
    """Add ``workers``, ``queues`` and (standalone only) ``dashboard`` to the CLI."""
    workers = sub.add_parser("workers", help="the live workers of every process on the store")
    store_options(workers, with_app=not embedded)
    workers.set_defaults(run=cmd_workers)

    queues = sub.add_parser("queues", help="list, pause and resume queues")
    queues_sub = queues.add_subparsers(dest="action", metavar="ACTION", parser_class=parser_class)
    queues_sub.required = True
    listing = queues_sub.add_parser("list", help="every known queue, its jobs and whether paused")
    listing.set_defaults(run=cmd_queues_list)
    pause = queues_sub.add_parser("pause", help="stop workers taking this queue's jobs")
    pause.add_argument("queue", metavar="QUEUE")
    pause.set_defaults(run=cmd_queues_pause)
    resume = queues_sub.add_parser("resume", help="let workers take this queue's jobs again")
    resume.add_argument("queue", metavar="QUEUE")
    resume.set_defaults(run=cmd_queues_resume)
    for action in (listing, pause, resume):
        store_options(action, with_app=not embedded)

    if not embedded:
        from ._dashboard import add_dashboard_command

        add_dashboard_command(sub)


def _dump(data: Any, out: IO[str]) -> None:
    out.write(json.dumps(data, indent=2, default=str) + "\n")


def cmd_workers(engine: Engine, ns: argparse.Namespace, out: IO[str]) -> int:
    """``backrun workers``: one line per live worker."""
    workers = engine.workers()
    if ns.json:
        _dump({"workers": [w.to_dict() for w in workers]}, out)
        return EXIT_OK
    if not workers:
        out.write("no live workers\n")
        return EXIT_OK
    now = engine.clock.now()
    rows = [["ID", "HOST", "PID", "QUEUES", "RUNNING", "UP", "SEEN"]]
    for w in workers:
        rows.append(
            [
                w.id,
                w.host,
                str(w.pid),
                "all" if w.queues is None else ",".join(w.queues),
                f"{len(w.running)}/{w.max_parallelism}",
                format_age(now, w.started_at),
                format_age(now, w.last_seen) + " ago",
            ]
        )
    table(rows, out)
    return EXIT_OK


def _queue(engine: Engine, name: str) -> str:
    try:
        from backrun.enqueueing import check_queue

        return check_queue(name)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def cmd_queues_pause(engine: Engine, ns: argparse.Namespace, out: IO[str]) -> int:
    """``backrun queues pause QUEUE``."""
    changed = engine.pause(_queue(engine, ns.queue))
    if ns.json:
        _dump({"queue": ns.queue, "paused": True, "changed": changed}, out)
    else:
        out.write(f"queue {ns.queue} {'paused' if changed else 'was paused already'}\n")
    return EXIT_OK


def cmd_queues_resume(engine: Engine, ns: argparse.Namespace, out: IO[str]) -> int:
    """``backrun queues resume QUEUE``."""
    changed = engine.resume(_queue(engine, ns.queue))
    if ns.json:
        _dump({"queue": ns.queue, "paused": False, "changed": changed}, out)
    else:
        out.write(f"queue {ns.queue} {'resumed' if changed else 'was not paused'}\n")
    return EXIT_OK


def cmd_queues_list(engine: Engine, ns: argparse.Namespace, out: IO[str]) -> int:
    """``backrun queues list``: queues with jobs or a pause, their waiting and running jobs."""
    paused = engine.paused()
    waiting: dict[str, int] = dict.fromkeys(paused, 0)
    running: dict[str, int] = dict.fromkeys(paused, 0)
    for (queue, state), n in engine.counts().items():
        waiting.setdefault(queue, 0)
        running.setdefault(queue, 0)
        if state.value in ("queued", "scheduled"):
            waiting[queue] += n
        elif state.value == "running":
            running[queue] += n
    names = sorted(waiting)
    if ns.json:
        _dump(
            {
                "queues": [
                    {
                        "queue": q,
                        "paused": q in paused,
                        "waiting": waiting[q],
                        "running": running[q],
                    }
                    for q in names
                ]
            },
            out,
        )
        return EXIT_OK
    if not names:
        out.write("no queues\n")
        return EXIT_OK
    rows = [["QUEUE", "STATUS", "WAITING", "RUNNING"]]
    for q in names:
        rows.append([q, "paused" if q in paused else "active", str(waiting[q]), str(running[q])])
    table(rows, out)
    return EXIT_OK
