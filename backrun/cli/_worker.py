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
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any

from backrun import __version__
from backrun.engine import Engine
from backrun.enqueueing import QUEUE_NAME
from backrun.errors import StorageError
from backrun.joblog import LoggingMiddleware, configure_logging
from backrun.middleware import Middleware
from backrun.worker import Worker

from ._child import child_link_from_env
from ._common import EXIT_FAILED, EXIT_OK, EXIT_STORE, EXIT_USAGE, CliError, describe_store
from ._process_options import add_process_arguments, supervised

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
    """What the worker commands let a user override on the engine."""

    queues: list[str] | None = None
    concurrency: int | None = None
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    shutdown_timeout: float | None = None
    log_format: str = "text"
    processes: int | None = None
    max_jobs_per_child: int | None = None
    max_memory_per_child: int | None = None
    reload: bool = False


def _queues(text: str) -> list[str]:
    names = [q.strip() for q in text.split(",") if q.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one queue name")
    for name in names:
        if QUEUE_NAME.match(name) is None:
            raise argparse.ArgumentTypeError(
                f"bad queue name {name!r}: use 1-64 characters of A-Z a-z 0-9 _ . -"
            )
    return names


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("ports are 0-65535 (0 picks a free one)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return value


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the worker options (shared by the CLI and the framework commands)."""
    parser.add_argument(
        "--queues", type=_queues, metavar="A,B", help="only take jobs from these queues"
    )
    parser.add_argument(
        "--threads",
        "--concurrency",
        dest="concurrency",
        type=positive_int,
        metavar="N",
        help="jobs run at once per process (threads); --concurrency is the old name",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        metavar="P",
        help="serve Prometheus metrics on this port (0 = any free port)",
    )
    parser.add_argument(
        "--metrics-addr", default="127.0.0.1", metavar="ADDR", help="metrics bind address"
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        metavar="S",
        help="seconds to let running jobs finish on SIGTERM before releasing them",
    )
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="job log line format"
    )
    add_process_arguments(parser)


def options_from_namespace(ns: argparse.Namespace | dict[str, Any]) -> WorkerOptions:
    """Build :class:`WorkerOptions` from parsed arguments (a namespace or a dict)."""
    values = vars(ns) if isinstance(ns, argparse.Namespace) else dict(ns)
    return WorkerOptions(
        queues=values.get("queues"),
        concurrency=values.get("concurrency"),
        metrics_port=values.get("metrics_port"),
        metrics_addr=values.get("metrics_addr") or "127.0.0.1",
        shutdown_timeout=values.get("shutdown_timeout"),
        log_format=values.get("log_format") or "text",
        processes=values.get("processes"),
        max_jobs_per_child=values.get("max_jobs_per_child"),
        max_memory_per_child=values.get("max_memory_per_child"),
        reload=bool(values.get("reload")),
    )


class _Watch(Middleware):
    """Sees the worker start, and announces each stop signal before the engine acts on it."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.worker: Worker | None = None
        self.interrupts = 0
        self.signals = 0
        self.ready = threading.Event()

    def worker_started(self, worker: Worker) -> None:
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
        try:
            self.out.write(f"backrun: {text}\n")
            self.out.flush()
        except (OSError, ValueError):
            pass


def _apply(engine: Engine, options: WorkerOptions) -> None:
    if options.concurrency is not None:
        engine.max_parallelism = options.concurrency
    if options.shutdown_timeout is not None:
        engine.shutdown_timeout = options.shutdown_timeout
    if options.queues is not None:
        engine.queues = frozenset(options.queues)
    if not any(isinstance(m, LoggingMiddleware) for m in engine.middleware):
        engine.add_middleware(LoggingMiddleware())


def _start_otlp() -> tuple[Any, str]:
    """Install OTLP export if the environment asks for it (``OTEL_EXPORTER_OTLP_ENDPOINT``)."""
    try:
        from backrun.observability.otlp import configure_otlp
    except ImportError:
        return None, ""
    try:
        export = configure_otlp()
    except ImportError as exc:
        return None, f"OTLP export requested but unavailable ({exc}): pip install 'backrun[otel]'"
    if export is None:
        return None, ""
    endpoint = os.environ.get("BACKRUN_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", ""
    )
    return export, f"OTLP/HTTP to {endpoint}"


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


def banner(engine: Engine, app: str, metrics: str, otlp: str, out: IO[str]) -> None:
    """Print the start-up banner."""
    handlers = engine.registry.names()
    queues = "all" if engine.queues is None else ", ".join(sorted(engine.queues))
    lines = [
        f"backrun {__version__} worker",
        f"  app:         {app}",
        f"  store:       {describe_store(engine.storage)}",
        f"  queues:      {queues}",
        f"  concurrency: {engine.max_parallelism}",
        f"  shutdown:    wait up to {engine.shutdown_timeout:g}s for running jobs",
        f"  metrics:     {metrics}",
        f"  tracing:     {_tracing(engine, otlp)}",
        f"  handlers:    {len(handlers)}"
        + ("" if handlers else " (none registered: nothing will run)"),
    ]
    lines.extend(f"    - {name}" for name in handlers)
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
    configure_logging("json" if options.log_format == "json" else "text", stream=stream)
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
            banner(engine, app or repr(engine), metrics, otlp, stream)
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
        if export is not None and not export.flush(timeout_millis=5000):
            log.warning("some spans or metrics could not be exported before exit")
    processed = watch.worker.processed if watch.worker is not None else 0
    if drained and watch.interrupts < 2:
        stream.write(f"backrun: worker stopped cleanly ({processed} attempt(s) processed)\n")
        return EXIT_OK
    why = "forced" if watch.interrupts >= 2 else "shutdown timeout reached"
    stream.write(f"backrun: worker stopped ({why}): running jobs were released to the queue\n")
    return EXIT_FAILED
