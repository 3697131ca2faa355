"""Flask integration: the ``Backrun`` extension and the ``flask backrun`` commands.

::

    jobs = Backrun()                      # extensions.py

    @jobs.handler(name="send_welcome")    # anywhere, before or after init_app
    def send_welcome(payload: Welcome) -> None: ...

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["BACKRUN_STORE"] = "var/backrun"
        jobs.init_app(app)                # starts nothing
        return app

    jobs.enqueue("send_welcome", {"email": "a@b.c"})     # in a view

``flask backrun worker`` runs the worker; ``flask backrun jobs ...`` and
``flask backrun stats`` inspect the store (the same options as the
``backrun`` command). Each job runs inside ``app.app_context()``.

Configuration keys (all optional): ``BACKRUN_STORE`` (a JSON store directory;
default ``$BACKRUN_DIR`` or ``.backrun``; a relative path is taken relative to
``app.instance_path``, not to the current directory), ``BACKRUN_STORAGE`` (a ready
``Storage``, e.g. ``PostgresStorage``), ``BACKRUN_HANDLER_PACKAGES`` (packages
whose handlers are discovered), ``BACKRUN_SCHEDULES`` (periodic jobs: a list of
dicts of ``engine.schedule``'s arguments, e.g. ``{"handler": "cleanup", "cron":
"30 2 * * *"}``), and one ``BACKRUN_<NAME>`` key per worker setting of
:data:`backrun.settings.SETTINGS` (``BACKRUN_THREADS``, ``BACKRUN_QUEUES``,
``BACKRUN_SHUTDOWN_TIMEOUT``, ``BACKRUN_MAX_RETRIES``, ``BACKRUN_JOB_TIMEOUT``,
...; the table in docs/flask.md lists them). ``BACKRUN_MAX_PARALLELISM`` is
the deprecated old name of ``BACKRUN_THREADS``.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, Unpack, overload

import click
from flask import Flask, current_app
from flask.cli import AppGroup, ScriptInfo

from backrun.cli import main as cli_main
from backrun.cli._common import exit_on_error
from backrun.context import JobContext
from backrun.engine import Engine
from backrun.jobs import Job
from backrun.limits import LimitOptions
from backrun.middleware import Middleware, ProcessNext
from backrun.retries import RetryPolicy
from backrun.schedules import apply_schedules
from backrun.settings import (
    EngineOptions,
    engine_options,
    known_keys,
    read_config,
    warn_deprecated,
)
from backrun.storage.base import Storage

__all__ = ["AppContextMiddleware", "Backrun", "store_path"]

F = TypeVar("F", bound=Callable[..., Any])

EXTENSION_KEY = "backrun"


class AppContextMiddleware(Middleware):
    """Run each attempt inside ``app.app_context()`` (``current_app``, ``g``, extensions)."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def process(self, ctx: JobContext, call_next: ProcessNext) -> None:
        """Push the application context around the rest of the chain."""
        with self.app.app_context():
            call_next(ctx)


@dataclass
class _State:
    """What the extension keeps per app in ``app.extensions["backrun"]``."""

    extension: Backrun
    app: Flask
    engine: Engine | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Backrun:
    """The Flask extension: one engine per app, built on first use.

    Args:
        app: the application, or ``None`` to call :meth:`init_app` later.
        engine: an engine to use instead of building one from the config.
        dashboard: mount the jobs dashboard at this path (e.g. ``"/ops/jobs"``);
            needs the ``web`` extra.
        dashboard_auth: called on every dashboard request inside the request
            context; a false result answers 403. Required with ``dashboard``.
        dashboard_read_only: show no actions and refuse every change.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        engine: Engine | None = None,
        dashboard: str | None = None,
        dashboard_auth: Callable[[], object] | None = None,
        dashboard_read_only: bool = False,
    ) -> None:
        if dashboard is not None and dashboard_auth is None:
            raise ValueError(
                "dashboard= needs dashboard_auth=: a callable that returns True for users "
                "allowed to see and change jobs (use lambda: True only on a trusted network)"
            )
        self._dashboard = (dashboard, dashboard_auth, dashboard_read_only)
        self._engine = engine
        self._handlers: list[tuple[Any, dict[str, Any]]] = []
        self._built: list[Engine] = [] if engine is None else [engine]
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Attach to ``app``: record state and add ``flask backrun``. Starts nothing."""
        app.config.setdefault("BACKRUN_STORE", None)
        app.extensions[EXTENSION_KEY] = _State(self, app, self._engine)
        app.cli.add_command(_command_group(self))
        prefix, auth, read_only = self._dashboard
        if prefix is not None and auth is not None:
            from ._flask_dashboard import mount_dashboard

            mount_dashboard(app, self.engine_for, prefix=prefix, auth=auth, read_only=read_only)

    # -- handlers -----------------------------------------------------------

    @overload
    def handler(self, fn: F, /) -> F: ...
    @overload
    def handler(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
        **limits: Unpack[LimitOptions],
    ) -> Callable[[F], F]: ...
    def handler(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
        **limits: Unpack[LimitOptions],
    ) -> F | Callable[[F], F]:
        """Register a function handler on every app's engine: ``@jobs.handler(name=...)``.

        Takes the keywords of :meth:`Engine.handler`, the handler limits
        (``max_concurrency``, ``concurrency_key``, ``rate_limit``) included.
        """

        def register(target: F) -> F:
            self.add_handler(target, name=name, retry=retry, queue=queue, **limits)
            return target

        return register(fn) if fn is not None else register

    def add_handler(self, handler: Any, **options: Any) -> None:
        """Register a handler (as :meth:`Engine.add_handler`) on every app's engine."""
        self._handlers.append((handler, options))
        for engine in self._built:
            engine.add_handler(handler, **options)

    # -- the engine -----------------------------------------------------------

    def engine_for(self, app: Flask) -> Engine:
        """The engine of ``app``, built from its config on first use."""
        state = app.extensions.get(EXTENSION_KEY)
        if not isinstance(state, _State):
            raise RuntimeError("Backrun.init_app(app) was not called for this app")
        with state.lock:
            if state.engine is None:
                state.engine = self._build(app)
            elif not any(
                isinstance(m, AppContextMiddleware) and m.app is app
                for m in state.engine.middleware
            ):
                state.engine.add_middleware(AppContextMiddleware(app))
            return state.engine

    @property
    def engine(self) -> Engine:
        """The current app's engine (needs an application context)."""
        return self.engine_for(current_app._get_current_object())  # type: ignore[attr-defined]

    def enqueue(self, handler: Any, payload: object = None, **options: Any) -> Job:
        """``engine.enqueue`` on the current app's engine."""
        return self.engine.enqueue(handler, payload, **options)

    def _build(self, app: Flask) -> Engine:
        config = app.config
        options = _engine_options(config)  # refuse a bad config before touching the store
        storage = config.get("BACKRUN_STORAGE")
        if not isinstance(storage, Storage):
            from backrun.storage.jsonfile import JsonFileStorage

            storage = JsonFileStorage(store_path(app))
        engine = Engine(storage, **options)
        engine.add_middleware(AppContextMiddleware(app))
        for handler, handler_options in self._handlers:
            engine.add_handler(handler, **handler_options)
        for package in config.get("BACKRUN_HANDLER_PACKAGES") or ():
            engine.add_handlers_from_package(package)
        apply_schedules(engine, config.get("BACKRUN_SCHEDULES") or (), "BACKRUN_SCHEDULES")
        self._built.append(engine)
        return engine


def store_path(app: Flask) -> str:
    """The absolute JSON store directory of ``app``.

    ``BACKRUN_STORE`` (default ``$BACKRUN_DIR`` or ``.backrun``), relative
    to ``app.instance_path`` when relative: the web process and the worker
    use one store whatever directory each was started from.
    """
    raw = app.config.get("BACKRUN_STORE") or os.environ.get("BACKRUN_DIR") or ".backrun"
    return os.path.abspath(os.path.join(app.instance_path, os.fspath(raw)))


FLASK_KEYS = known_keys("flask") | {
    "BACKRUN_STORE",
    "BACKRUN_STORAGE",
    "BACKRUN_HANDLER_PACKAGES",
    "BACKRUN_SCHEDULES",
}
"""Every config key the extension reads: its own, and one per setting of the model."""


def _engine_options(config: Mapping[str, Any]) -> EngineOptions:
    """The model's settings from ``BACKRUN_*`` keys (a key set to ``None`` is unset)."""
    given = {k: v for k, v in config.items() if k.startswith("BACKRUN_") and v is not None}
    unknown = sorted(set(given) - FLASK_KEYS)
    if unknown:
        warnings.warn(
            f"unknown Flask config key(s) {', '.join(unknown)} (backrun reads: "
            f"{', '.join(sorted(FLASK_KEYS))})",
            UserWarning,
            stacklevel=4,
        )
    values, problems, deprecations = read_config(given, "flask")
    if problems:
        raise ValueError("; ".join(problems))
    warn_deprecated(deprecations, stacklevel=4)
    return engine_options(values)


_PASS_THROUGH: dict[str, Any] = {
    "ignore_unknown_options": True,
    "allow_extra_args": True,
    "help_option_names": [],
}


def _child_command() -> list[str]:
    """How a ``--processes`` child runs ``flask backrun worker`` on the same app."""
    info = click.get_current_context().find_object(ScriptInfo)
    where = getattr(info, "app_import_path", None)
    app = ["--app", where] if isinstance(where, str) and where else []
    return [sys.executable, "-m", "flask", *app, "backrun", "worker"]


def _command_group(extension: Backrun) -> click.Group:
    group = AppGroup("backrun", help="Run backrun's worker and inspect its jobs.")

    def run(command: str, args: tuple[str, ...]) -> None:
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        argv = [command, *args]
        port = app.config.get("BACKRUN_METRICS_PORT")
        if command == "worker":
            if port is not None and "--metrics-port" not in args:
                argv[1:1] = ["--metrics-port", str(port)]
            # The worker logs through the root logger (one format, the job's id on
            # each line); Flask's own stderr handler would print app lines twice.
            from flask.logging import default_handler

            app.logger.removeHandler(default_handler)
        engine = exit_on_error(lambda: extension.engine_for(app), usage_errors=(ValueError,))
        code = cli_main(
            argv,
            engine=engine,
            prog="flask backrun",
            app_label=f"flask app {app.import_name!r}",
            child_command=_child_command(),
        )
        raise SystemExit(code)

    @group.command("worker", context_settings=_PASS_THROUGH, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def worker(args: tuple[str, ...]) -> None:
        """Run a worker until SIGTERM/SIGINT (see --help)."""
        run("worker", args)

    @group.command("jobs", context_settings=_PASS_THROUGH, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def jobs(args: tuple[str, ...]) -> None:
        """List, show, retry, cancel and purge jobs (see --help)."""
        run("jobs", args)

    @group.command("stats", context_settings=_PASS_THROUGH, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stats(args: tuple[str, ...]) -> None:
        """Jobs by queue and state (see --help)."""
        run("stats", args)

    return group
