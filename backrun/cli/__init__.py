"""The ``backrun`` command: run a worker, inspect and steer jobs, set up PostgreSQL.

Usage::

    backrun worker myapp.jobs:engine [--queues a,b] [--threads N] [--metrics-port P]
                   [--processes N] [--max-jobs-per-child K] [--max-memory-per-child MB] [--reload]
    backrun jobs list [--state dead] [--queue Q] [--limit N]
    backrun jobs show ID | retry ID | retry --all-dead | cancel ID
    backrun jobs purge --state succeeded --older-than 7d
    backrun stats
    backrun schedules [--app MODULE:ENGINE]
    backrun workers | queues list | queues pause Q | queues resume Q
    backrun dashboard MODULE:ENGINE [--port 8080] [--host 127.0.0.1] [--basic-auth U:P]
    backrun db init --dsn postgresql://... [--schema backrun]
    backrun grafana export DIR

``jobs`` and ``stats`` find the store from ``--store PATH`` (a JSON store
directory), ``--app MODULE:ENGINE``, ``$BACKRUN_APP``, or the default store
directory (``$BACKRUN_DIR`` or ``./.backrun``); they never create a store,
and ``jobs list``, ``jobs show`` and ``stats`` change nothing. The ``jobs``,
``stats``, ``db init`` and ``grafana export`` commands take ``--json``.
Errors are one ``error: ...`` line on stderr (``--traceback`` adds the full
traceback of an import error). Exit codes: 0 ok, 1 failed (or a worker forced
to stop / crashed), 2 usage or import error, 3 store unavailable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import IO

from backrun import __version__
from backrun.engine import Engine
from backrun.errors import StorageError

from . import _grafana, _jobs, _ops
from ._common import EXIT_OK, EXIT_STORE, EXIT_USAGE, CliError, load_engine, resolve_engine
from ._schedules import add_schedules_command
from ._worker import add_worker_arguments, options_from_namespace, positive_int, run_worker

__all__ = ["build_parser", "main"]

Command = Callable[[Engine, argparse.Namespace, IO[str]], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``error:`` line (exit 2), like the rest."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Exit 2 with one ``error:`` line naming the problem and ``--help``."""
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def _store_options(parser: argparse.ArgumentParser, *, with_app: bool) -> None:
    if with_app:
        parser.add_argument("--store", metavar="PATH", help="a JSON store directory to work on")
        parser.add_argument(
            "--app", metavar="MODULE:ENGINE", help="import this engine and use its store"
        )
        _traceback_option(parser)
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _traceback_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on an import error, print the full traceback too",
    )


def build_parser(prog: str = "backrun", *, embedded: bool = False) -> argparse.ArgumentParser:
    """The argument parser. ``embedded``: a framework supplies the engine (no --app/--store)."""
    parser = _Parser(prog=prog, description="backrun: background jobs for Python.")
    parser.add_argument("--version", action="version", version=f"backrun {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    worker = sub.add_parser("worker", help="run a worker until SIGTERM/SIGINT")
    if not embedded:
        worker.add_argument(
            "app",
            nargs="?",
            metavar="MODULE:ENGINE",
            help="the engine to run, e.g. myapp.jobs:engine (default: $BACKRUN_APP)",
        )
        _traceback_option(worker)
    add_worker_arguments(worker)

    jobs = sub.add_parser("jobs", help="list, show, retry, cancel and purge jobs")
    jobs_sub = jobs.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    jobs_sub.required = True

    listing = jobs_sub.add_parser("list", help="list jobs, oldest first")
    listing.add_argument("--state", type=_jobs.parse_state, help="only jobs in this state")
    listing.add_argument("--queue", help="only jobs in this queue")
    listing.add_argument(
        "--limit", type=positive_int, default=50, metavar="N", help="at most this many (50)"
    )
    listing.set_defaults(run=_jobs.cmd_list, read_only=True)

    show = jobs_sub.add_parser("show", help="one job's record and every attempt's error")
    show.add_argument("id", metavar="ID")
    show.add_argument(
        "--tracebacks", action="store_true", help="print every attempt's traceback, not the last"
    )
    show.set_defaults(run=_jobs.cmd_show, read_only=True)

    retry = jobs_sub.add_parser("retry", help="run a dead, cancelled or scheduled job again now")
    retry.add_argument("id", metavar="ID", nargs="?")
    retry.add_argument("--all-dead", action="store_true", help="retry every DEAD job")
    retry.set_defaults(run=_jobs.cmd_retry)

    cancel = jobs_sub.add_parser("cancel", help="cancel a job (a running one is asked to stop)")
    cancel.add_argument("id", metavar="ID")
    cancel.set_defaults(run=_jobs.cmd_cancel)

    purge = jobs_sub.add_parser("purge", help="delete finished jobs older than a given age")
    purge.add_argument(
        "--state",
        required=True,
        metavar="S",
        help="succeeded, dead, cancelled, or finished (all three)",
    )
    purge.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 7d, 12h, 30m")
    purge.set_defaults(run=_jobs.cmd_purge)

    for action in (listing, show, retry, cancel, purge):
        _store_options(action, with_app=not embedded)

    stats = sub.add_parser("stats", help="jobs by queue and state, oldest ready job's age")
    _store_options(stats, with_app=not embedded)
    stats.set_defaults(run=_jobs.cmd_stats, read_only=True)

    add_schedules_command(sub, embedded=embedded)

    _ops.add_ops_commands(sub, _store_options, embedded=embedded, parser_class=_Parser)

    if not embedded:
        db = sub.add_parser("db", help="set up the PostgreSQL store")
        db_sub = db.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
        db_sub.required = True
        init = db_sub.add_parser("init", help="create or upgrade backrun's tables")
        init.add_argument("--dsn", required=True, help="e.g. postgresql://user@host/db")
        init.add_argument("--schema", default="backrun", help="schema name (backrun)")
        init.add_argument(
            "--timeout", type=float, default=5.0, metavar="S", help="connection timeout (5)"
        )
        init.add_argument("--json", action="store_true", help="print JSON for scripts")
    _grafana.add_parser(sub)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    engine: Engine | None = None,
    prog: str = "backrun",
    app_label: str = "",
    child_command: Sequence[str] | None = None,
) -> int:
    """Run the CLI; return the exit code.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        engine: an engine supplied by a framework command (``flask backrun``,
            ``manage.py backrun``); then ``--app``/``--store`` do not apply.
        prog: the program name shown in help and errors.
        app_label: how the banner names a supplied engine.
        child_command: how a framework runs one worker of a supplied engine
            (``--processes`` starts children with it, plus their options).
    """
    parser = build_parser(prog, embedded=engine is not None)
    ns = parser.parse_args(argv)
    out = sys.stdout
    try:
        if ns.command == "worker":
            app = getattr(ns, "app", None)
            if engine is None:
                app = app or os.environ.get("BACKRUN_APP")
                if not app:
                    raise CliError(
                        "give the engine to run: backrun worker MODULE:ENGINE (or set BACKRUN_APP)",
                        EXIT_USAGE,
                    )
                target = load_engine(app)
                child_command = [sys.executable, "-m", "backrun", "worker", app]
            else:
                target = engine
            return run_worker(
                target,
                options_from_namespace(ns),
                app=app or app_label or repr(target),
                child_command=child_command,
            )
        if ns.command == "db":
            return _jobs.cmd_db_init(ns, out)
        if ns.command == "grafana":
            return _grafana.cmd_export(ns, out)
        target = resolve_engine(
            getattr(ns, "app", None),
            getattr(ns, "store", None),
            engine,
            read_only=getattr(ns, "read_only", False),
        )
        run: Command = ns.run
        code = run(target, ns, out)
        out.flush()  # a closed pipe shows here, inside the handler below
        return code
    except BrokenPipeError:
        # `backrun jobs list | head -1`: the reader left; stop quietly, as `ls` does.
        _silence_stdout()
        return EXIT_OK
    except CliError as exc:
        with suppress(BrokenPipeError):
            out.flush()
        if exc.details and getattr(ns, "traceback", False):
            sys.stderr.write(exc.details)
        sys.stderr.write(f"error: {exc}\n")
        return exc.code
    except StorageError as exc:
        out.flush()
        sys.stderr.write(f"error: store unavailable: {exc}\n")
        return EXIT_STORE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # pragma: no cover - stdout is not a real file
        pass
