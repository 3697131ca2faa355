"""``backrun worker``: run an engine's worker in the foreground until a signal.

Shared by ``manage.py backrun_worker`` and ``flask backrun worker``, which
pass their own engine and the same options.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any

from backrun import __version__
from backrun.engine import Engine
from backrun.errors import StorageError
from backrun.joblog import LoggingMiddleware
from backrun.logformat import LogFormat, configure_logging, parse_level
from backrun.middleware import Middleware, WorkerHandle
from backrun.settings import Setting, for_frontend

from ._child import child_link_from_env
from ._common import EXIT_FAILED, EXIT_OK, EXIT_STORE, EXIT_USAGE, CliError, describe_store
from ._process_options import supervised

__all__ = [
    "WorkerOptions",
    "add_worker_arguments",
    "options_from_namespace",
    "positive_int",
    "run_worker",
]

log = logging.getLogger("backrun.cli")


@dataclass
class WorkerOptions:
    """What the worker commands let a user override on the engine.

    One field per CLI setting of :data:`backrun.settings.SETTINGS` (a test
    keeps them equal); ``None`` leaves the engine's own value.
    """

    queues: list[str] | None = None
    threads: int | None = None
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    shutdown_timeout: float | None = None
    log_format: str = "text"
    log_level: int = logging.INFO
    processes: int | None = None
    max_jobs_per_child: int | None = None
    max_memory_per_child: int | None = None
    reload: bool = False


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _text_to_value(setting: Setting, text: str) -> object:
    """Turn a flag's text into what the setting's check takes."""
    if setting.name == "log_level":
        try:
            parse_level(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text.strip().lower()
    if setting.name in ("queues", "metrics_addr", "log_format"):
        return text
    if isinstance(setting.default, float) or setting.metavar == "S":
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    try:
        return int(text)
    except ValueError:
        kind = "port number" if setting.name == "metrics_port" else "whole number"
        raise argparse.ArgumentTypeError(f"not a {kind}: {text!r}") from None


def _argument_type(setting: Setting) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            value = setting.check(_text_to_value(setting, text))
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if setting.name == "queues":
            return list(value)
        if setting.name == "log_level":
            return parse_level(value)
        return value

    convert.__name__ = setting.name  # argparse names the type in its errors
    return convert


class _Deprecated(argparse.Action):
    """Store as the setting's own flag would, and say which flag to use instead."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if option_string is not None and option_string != self.new:
            sys.stderr.write(f"warning: {option_string} is deprecated; use {self.new}\n")
        setattr(namespace, self.dest, values)


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the worker options (shared by the CLI and the framework commands).

    Every flag comes from :data:`backrun.settings.SETTINGS`: its name, type,
    check and help; old names are accepted with a warning.
    """
    for setting in for_frontend("cli"):
        if "engine" in setting.where:
            help_text = f"{setting.doc} (default: the engine's, {_default_text(setting)})"
        elif setting.default not in (None, False):
            help_text = f"{setting.doc} (default {setting.default})"
        else:
            help_text = setting.doc
        if setting.old_flags:
            help_text += f"; {', '.join(setting.old_flags)} is its deprecated old name"
        if setting.flag:
            parser.add_argument(setting.cli, action="store_true", help=help_text)
            continue
        default = setting.default if setting.name in _SHOWN_DEFAULTS else None
        if setting.name == "log_level" and default is not None:
            default = parse_level(str(default))
        parser.add_argument(
            setting.cli,
            *setting.old_flags,
            dest=setting.name,
            type=_argument_type(setting),
            metavar=setting.metavar,
            default=default,
            help=help_text,
            action=_Deprecated,
            new=setting.cli,
        )


def _default_text(setting: Setting) -> str:
    default = setting.default
    if default is None:
        return "all" if setting.name == "queues" else "none"
    return f"{default:g}" if isinstance(default, float) else str(default)


# Defaults the CLI fills in itself; the others default to the engine's own value.
_SHOWN_DEFAULTS = frozenset({"metrics_addr", "log_format", "log_level"})


def options_from_namespace(ns: argparse.Namespace | dict[str, Any]) -> WorkerOptions:
    """Build :class:`WorkerOptions` from parsed arguments (a namespace or a dict)."""
    values = vars(ns) if isinstance(ns, argparse.Namespace) else dict(ns)
    if values.get("threads") is None and values.get("concurrency") is not None:
        values["threads"] = values["concurrency"]  # a caller's dict in the old spelling
    return WorkerOptions(
        queues=values.get("queues"),
        threads=values.get("threads"),
        metrics_port=values.get("metrics_port"),
        metrics_addr=values.get("metrics_addr") or "127.0.0.1",
        shutdown_timeout=values.get("shutdown_timeout"),
        log_format=values.get("log_format") or "text",
        log_level=_level_value(values.get("log_level")),
        processes=values.get("processes"),
        max_jobs_per_child=values.get("max_jobs_per_child"),
        max_memory_per_child=values.get("max_memory_per_child"),
        reload=bool(values.get("reload")),
    )


def _level_value(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return parse_level(value)
    return logging.INFO


class _Watch(Middleware):
    """Sees the worker start, and announces each stop signal before the engine acts on it."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.worker: WorkerHandle | None = None
        self.interrupts = 0
        self.signals = 0
        self.ready = threading.Event()

    def worker_started(self, worker: WorkerHandle) -> None:
        self.worker = worker
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                inner = signal.getsignal(sig)
                if callable(inner):
                    signal.signal(sig, self._wrap(inner))
        # Printed only now: a signal sent after this line is drained, not fatal.
        self._say(f"worker {worker.id} ready: waiting for jobs (Ctrl+C or SIGTERM to stop)")
        self.ready.set()

    def _wrap(self, inner: Callable[[int, FrameType | None], Any]) -> Callable[..., None]:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.signals += 1
            if signum == signal.SIGINT:
                self.interrupts += 1
            worker = self.worker
            running = worker.running_count if worker is not None else 0
            name = signal.Signals(signum).name
            if self.interrupts >= 2 and signum == signal.SIGINT:
                self._say(f"{name} again: forcing shutdown, releasing {running} running job(s)")
            elif self.signals == 1:
                timeout = worker.shutdown_timeout if worker is not None else 0.0
                self._say(
                    f"{name} received: claiming no more jobs, waiting up to {timeout:g}s for "
                    f"{running} running job(s) (Ctrl+C again to force)"
                )
            inner(signum, frame)

        return on_signal

    def _say(self, text: str) -> None:
        say(text)


def say(text: str, level: int = logging.INFO) -> None:
    """A worker-command line (ready, stopping, stopped), in the configured log format."""
    with suppress(OSError, ValueError):  # the stream is gone
        log.log(level, "%s", text)


def _apply(engine: Engine, options: WorkerOptions) -> None:
    if options.threads is not None:
        engine.threads = options.threads
    if options.shutdown_timeout is not None:
        engine.shutdown_timeout = options.shutdown_timeout
    if options.queues is not None:
        engine.queues = frozenset(options.queues)
    if not any(isinstance(m, LoggingMiddleware) for m in engine.middleware):
        engine.add_middleware(LoggingMiddleware())


def _otlp_variable() -> str:
    for name in ("BACKRUN_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if os.environ.get(name):
            return name
    return ""


def _start_otlp() -> tuple[Any, str]:
    """Install OTLP export if the environment asks for it (``OTEL_EXPORTER_OTLP_ENDPOINT``).

    Without the ``otel`` extra the worker says so in one line and runs without export.
    """
    variable = _otlp_variable()
    if not variable:
        return None, ""
    try:
        from backrun.observability.otlp import configure_otlp

        export = configure_otlp()
    except ImportError:
        log.warning(
            "%s is set but the otel extra is not installed: pip install 'backrun[otel]' "
            "(running without OTLP export)",
            variable,
        )
        return None, "the otel extra is not installed"
    if export is None:
        return None, ""
    return export, f"OTLP/HTTP to {os.environ[variable]}"


def _tracing(engine: Engine, otlp: str) -> str:
    if not any(type(m).__name__ == "TracingMiddleware" for m in engine.middleware):
        return "off"
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - opentelemetry-api is a dependency
        return "off (opentelemetry-api missing)"
    provider = type(trace.get_tracer_provider()).__name__
    if provider in ("ProxyTracerProvider", "NoOpTracerProvider"):
        hint = otlp or "set OTEL_EXPORTER_OTLP_ENDPOINT to export"
        return f"on, no tracer provider: spans are dropped ({hint})"
    return f"on ({provider}{', ' + otlp if otlp else ''})"


def _start_metrics(engine: Engine, options: WorkerOptions) -> tuple[str, Any]:
    if options.metrics_port is None:
        return "off (use --metrics-port)", None
    try:
        from backrun.observability.metrics import serve_metrics
    except ImportError as exc:
        return f"unavailable ({exc})", None
    try:
        server = serve_metrics(engine, options.metrics_port, addr=options.metrics_addr)
    except OSError as exc:
        raise CliError(
            f"cannot serve metrics on {options.metrics_addr}:{options.metrics_port}: {exc}",
            EXIT_USAGE,
        ) from exc
    url = getattr(server, "url", None)
    return (url if isinstance(url, str) else f"port {options.metrics_port}"), server


def banner(
    engine: Engine, app: str, metrics: str, otlp: str, out: IO[str], *, log_format: str = "text"
) -> None:
    """Print the start-up banner (one JSON log record under ``--log-format json``)."""
    handlers = engine.registry.names()
    queues = "all" if engine.queues is None else ", ".join(sorted(engine.queues))
    lines = [
        f"backrun {__version__} worker",
        f"  app:         {app}",
        f"  store:       {describe_store(engine.storage)}",
        f"  queues:      {queues}",
        f"  threads:     {engine.threads}",
        f"  shutdown:    wait up to {engine.shutdown_timeout:g}s for running jobs",
        f"  metrics:     {metrics}",
        f"  tracing:     {_tracing(engine, otlp)}",
        f"  handlers:    {len(handlers)}"
        + ("" if handlers else " (none registered: nothing will run)"),
    ]
    lines.extend(f"    - {name}" for name in handlers)
    if log_format == "json":
        fields = {
            "event": "worker.banner",
            "version": __version__,
            "app": app,
            "store": describe_store(engine.storage),
            "queues": queues,
            "threads": engine.threads,
            "shutdown_timeout_s": engine.shutdown_timeout,
            "metrics": metrics,
            "tracing": _tracing(engine, otlp),
            "handlers": handlers,
        }
        log.info("backrun %s worker", __version__, extra={"backrun": fields})
        return
    out.write("\n".join(lines) + "\n")
    out.flush()


def run_worker(
    engine: Engine,
    options: WorkerOptions,
    *,
    app: str = "",
    out: IO[str] | None = None,
    child_command: Sequence[str] | None = None,
) -> int:
    """Run ``engine``'s worker in this (main) thread until SIGTERM/SIGINT; return an exit code.

    0 when every running job finished, 1 when jobs had to be released
    (forced by a second Ctrl+C, or past the shutdown timeout) or the worker
    crashed, 3 when the store is unavailable.

    With ``--processes``, ``--max-*-per-child`` or ``--reload`` this process
    supervises children started with ``child_command`` (how this front end
    runs one worker) instead: see :mod:`backrun.cli._parent`.
    """
    stream = out if out is not None else sys.stderr
    log_format: LogFormat = "json" if options.log_format == "json" else "text"
    configure_logging(log_format, stream=stream, level=options.log_level)
    # Ready, stopping, stopped: shown whatever --log-level, as a worker's pulse.
    log.setLevel(min(options.log_level, logging.INFO))
    link = child_link_from_env(
        max_jobs=options.max_jobs_per_child, max_memory_mb=options.max_memory_per_child
    )
    if link is None and supervised(options):
        from ._parent import run_processes

        _apply(engine, options)
        return run_processes(
            engine, options, command=child_command, app=app or repr(engine), out=stream
        )
    if link is not None:
        options.metrics_port = None  # the parent serves every child's metrics
    _apply(engine, options)
    try:
        engine.storage.counts()
    except Exception as exc:
        raise CliError(
            f"store unavailable: {describe_store(engine.storage)}: {exc}", EXIT_STORE
        ) from exc
    watch = _Watch(stream)
    engine.add_middleware(watch)
    if link is not None:
        engine.add_middleware(link)
    metrics, server = _start_metrics(engine, options)
    export, otlp = _start_otlp()
    try:
        if link is None:  # a child of --processes: the parent printed the banner
            banner(engine, app or repr(engine), metrics, otlp, stream, log_format=log_format)
        try:
            drained = engine.run_forever()
        except StorageError as exc:
            raise CliError(f"store unavailable: {exc}", EXIT_STORE) from exc
        except Exception as exc:
            log.exception("worker crashed")
            raise CliError(f"worker crashed: {type(exc).__name__}: {exc}", EXIT_FAILED) from exc
    finally:
        engine.middleware.remove(watch)
        if link is not None:
            engine.middleware.remove(link)
            link.close()
        if server is not None:
            server.close()
        if export is not None:
            _close_export(export, engine.shutdown_timeout)
        # The command owns this process: close the store's connections and
        # threads now, not in the interpreter's finalization (psycopg's pool
        # cannot join its threads there on Python 3.13, and exit hangs).
        engine.close()
    processed = watch.worker.processed if watch.worker is not None else 0
    if drained and watch.interrupts < 2:
        say(f"worker stopped cleanly ({processed} attempt(s) processed)")
        return EXIT_OK
    why = "forced" if watch.interrupts >= 2 else "shutdown timeout reached"
    say(f"worker stopped ({why}): running jobs were released to the queue", logging.WARNING)
    return EXIT_FAILED


# However long the shutdown timeout, exit waits at most this long on a collector.
_MAX_FLUSH_S = 5.0


def _close_export(export: Any, shutdown_timeout: float) -> None:
    timeout = min(max(shutdown_timeout, 1.0), _MAX_FLUSH_S)
    if not export.close(timeout):
        log.warning(
            "some spans or metrics were not exported before exit (waited up to %gs)", timeout
        )
