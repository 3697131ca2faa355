"""The supervising parent of ``--processes``/``--reload``: check, banner, metrics, then the pool.

Metrics: the children write prometheus_client's multiprocess files into a
private directory (``PROMETHEUS_MULTIPROC_DIR``, mode 0700, deleted at exit)
and the parent serves them all on the one ``--metrics-port``, merged, with the
queue gauges it reads from the store. Counters and histograms are summed over
children, living and dead; the running and stuck-thread gauges are summed
over living children (``livesum``), so no series carries a ``pid`` label.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

from ._common import EXIT_STORE, EXIT_USAGE, CliError, describe_store
from ._processes import ProcessPool

if TYPE_CHECKING:
    from backrun.engine import Engine

    from ._worker import WorkerOptions

__all__ = ["run_processes"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("backrun.cli")


class _Metrics:
    """The parent's ``/metrics`` endpoint over the children's multiprocess files."""

    def __init__(self, engine: Engine, port: int, addr: str) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        from backrun.observability.queue_collector import register_queue_collector

        self.path = tempfile.mkdtemp(prefix="backrun-metrics-")  # 0700
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.path)  # type: ignore[no-untyped-call]
        register_queue_collector(engine.storage, registry=registry, clock=engine.clock)
        try:
            self._server, self._thread = start_http_server(port, addr=addr, registry=registry)
        except OSError as exc:
            shutil.rmtree(self.path, ignore_errors=True)
            raise CliError(f"cannot serve metrics on {addr}:{port}: {exc}", EXIT_USAGE) from exc
        self.port: int = self._server.server_address[1]
        self.url = f"http://{addr}:{self.port}/metrics"

    def child_exited(self, pid: int) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        shutil.rmtree(self.path, ignore_errors=True)


def _forget_worker(engine: Engine) -> Callable[[str], None]:
    """Unregister a dead child's worker, so its jobs are orphans now, not when its lease ends.

    The JSON store sees a dead process at once (its lock is free) and this
    changes nothing there; PostgreSQL would otherwise wait for the worker's
    heartbeat row to expire (the lease, 60 s by default).
    """

    def forget(worker_id: str) -> None:
        try:
            engine.storage.unregister_worker(worker_id)
        except Exception as exc:
            log.warning("could not unregister dead worker %s: %s", worker_id, exc)

    return forget


def _banner(engine: Engine, app: str, metrics: str, processes: int, threads: int) -> str:
    from ._worker import banner

    text = io.StringIO()
    endpoint = os.environ.get("BACKRUN_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", ""
    )
    otlp = f"OTLP/HTTP to {endpoint}, from each child" if endpoint else ""
    banner(engine, app, metrics, otlp, text)
    lines = text.getvalue().splitlines()
    line = f"  processes:   {processes} x {threads} threads ({processes * threads} jobs at once)"
    for i, old in enumerate(lines):
        if old.lstrip().startswith(("concurrency:", "threads:")):
            lines[i] = line
            break
    else:
        lines.insert(min(4, len(lines)), line)
    return "\n".join(lines) + "\n"


def _check_reload() -> None:
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        raise CliError(
            "--reload needs watchfiles: pip install 'backrun[reload]'", EXIT_USAGE
        ) from None


def _watch(pool: ProcessPool, root: str, stop: threading.Event) -> threading.Thread:
    """Ask ``pool`` to reload whenever a ``.py`` file under ``root`` changes (watchfiles)."""
    from watchfiles import PythonFilter, watch

    def run() -> None:
        for changes in watch(root, watch_filter=PythonFilter(), stop_event=stop):
            pool.request_reload([path for _, path in changes])

    thread = threading.Thread(target=run, name="backrun-reload", daemon=True)
    thread.start()
    return thread


def run_processes(
    engine: Engine,
    options: WorkerOptions,
    *,
    command: Sequence[str] | None,
    app: str,
    out: IO[str],
) -> int:
    """Run ``options.processes`` supervised children of ``command``; return the exit code.

    The engine is used only to check the store (exit 3 if unavailable), for
    the banner and for the queue gauges: the parent claims nothing.
    """
    if not command:
        raise CliError(
            "--processes, --max-*-per-child and --reload need a command to start workers "
            "with; this front end does not give one",
            EXIT_USAGE,
        )
    if options.reload:
        _check_reload()
    try:
        engine.storage.counts()
    except Exception as exc:
        raise CliError(
            f"store unavailable: {describe_store(engine.storage)}: {exc}", EXIT_STORE
        ) from exc
    processes = options.processes or 1
    threads = options.threads or engine.threads
    metrics: _Metrics | None = None
    env: dict[str, Any] = {}
    if options.metrics_port is not None:
        metrics = _Metrics(engine, options.metrics_port, options.metrics_addr)
        env[MULTIPROC_ENV] = metrics.path
    described = metrics.url if metrics is not None else "off (use --metrics-port)"
    try:
        out.write(_banner(engine, app, described, processes, threads))
        out.write(
            f"backrun: supervisor pid {os.getpid()} starting {processes} worker process(es)"
            + (" (reload on .py changes: development only)" if options.reload else "")
            + "\n"
        )
        out.flush()
        pool = ProcessPool(
            command=command,
            processes=processes,
            threads=threads,
            options=options,
            out=out,
            env=env,
            on_exit=metrics.child_exited if metrics is not None else None,
            on_worker_lost=_forget_worker(engine),
            reload_root=os.getcwd() if options.reload else None,
            shutdown_timeout=engine.shutdown_timeout,
        )
        stop_watching = threading.Event()
        watcher = _watch(pool, os.getcwd(), stop_watching) if options.reload else None
        try:
            code = pool.run()
        finally:
            stop_watching.set()
            if watcher is not None:
                watcher.join(timeout=5)
    finally:
        if metrics is not None:
            metrics.close()
    if pool.gave_up:
        pool.say("stopped: a child process kept failing at start")
    elif pool.forced or code:
        pool.say("stopped (forced or unclean): running jobs were released to the queue")
    else:
        pool.say(f"stopped cleanly ({pool.restarts} child restart(s))")
    return code
