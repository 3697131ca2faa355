"""What every CLI command shares: exit codes, errors, finding the engine or store, output."""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

from backrun.engine import Engine
from backrun.errors import StorageError
from backrun.storage.base import Storage

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_STORE",
    "EXIT_USAGE",
    "CliError",
    "Progress",
    "describe_store",
    "engine_for_store",
    "exit_on_error",
    "format_age",
    "load_engine",
    "open_store",
    "parse_duration",
    "resolve_engine",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STORE = 3

APP_ENV = "BACKRUN_APP"


class CliError(Exception):
    """A failure reported as one ``error: ...`` line and an exit code.

    Args:
        message: the line (without ``error:``).
        code: the exit code.
        details: a full traceback, printed under ``--traceback``.
    """

    def __init__(self, message: str, code: int = EXIT_FAILED, details: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.details = details


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _where(error: BaseException) -> str:
    """``app.py:12``: where an import failed, in the user's code, not importlib's."""
    if isinstance(error, SyntaxError) and error.filename and error.lineno:
        return f"{_short_path(error.filename)}:{error.lineno}"
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        if (
            "importlib" not in frame.filename
            and not frame.filename.startswith("<frozen")
            and os.path.abspath(frame.filename) != os.path.abspath(__file__)
        ):
            return f"{_short_path(frame.filename)}:{frame.lineno}"
    return ""


def _short_path(filename: str) -> str:
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # pragma: no cover - another drive on Windows
        return filename
    return filename if relative.startswith("..") else relative


def exit_on_error(
    build: Callable[[], Engine], *, usage_errors: tuple[type[Exception], ...] = ()
) -> Engine:
    """``build()``, or exit as ``backrun`` does: one ``error:`` line and its code.

    For the framework commands (``manage.py backrun_worker``, ``flask backrun``),
    whose engine is built from settings before the CLI runs: a store that
    cannot be used exits 3, a bad setting (``usage_errors``) exits 2.
    """
    try:
        return build()
    except StorageError as exc:
        sys.stderr.write(f"error: store unavailable: {exc}\n")
        raise SystemExit(EXIT_STORE) from None
    except usage_errors as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(EXIT_USAGE) from None


def load_engine(spec: str) -> Engine:
    """Import ``module:attribute`` (``module`` alone means ``module:engine``) and return it.

    The current directory is put on ``sys.path`` first, as ``python -m`` does,
    so ``backrun worker myapp:engine`` works from the project's root.

    Raises:
        CliError: malformed spec, the module does not import (code 2), the
            attribute is missing or not an Engine (code 2), or building the
            engine's store failed (code 3).
    """
    module_name, _, attr = spec.partition(":")
    attr = attr or "engine"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise CliError(f"{spec!r} is not MODULE:ENGINE (e.g. myapp.jobs:engine)", EXIT_USAGE)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except StorageError as exc:
        raise CliError(
            f"store unavailable while importing {module_name!r}: {exc}", EXIT_STORE
        ) from None
    except Exception as exc:
        where = _where(exc)
        raise CliError(
            f"cannot import {module_name!r}: {_one_line(exc)}"
            + (f" ({where})" if where else "")
            + "; run with --traceback for the full traceback",
            EXIT_USAGE,
            details="".join(traceback.format_exception(exc)),
        ) from exc
    target: object = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise CliError(f"module {module_name!r} has no attribute {attr!r}", EXIT_USAGE)
        target = getattr(target, part)
    if not isinstance(target, Engine):
        raise CliError(
            f"{module_name}:{attr} is a {type(target).__name__}, not a backrun.Engine", EXIT_USAGE
        )
    return target


def open_store(path: str, *, read_only: bool = False) -> Storage:
    """Open an existing JSON store directory; never create one, nor anything in it.

    Unlike a worker, which creates its store, this refuses a missing
    directory or one that is not a store: a typo in ``--store`` (or
    ``--store /etc``) must not create or change anything.

    Args:
        path: the store's directory.
        read_only: the command only reads (``jobs list``/``show``, ``stats``),
            so a store this user cannot write is fine.

    Raises:
        CliError: (code 3) missing, not a directory, not a store, not
            writable (unless ``read_only``), or refused by the store itself.
    """
    where = Path(path)
    if not where.exists():
        raise CliError(f"store directory {path!r} does not exist", EXIT_STORE)
    if not where.is_dir():
        raise CliError(f"store path {path!r} is not a directory", EXIT_STORE)
    access = os.R_OK | os.X_OK if read_only else os.R_OK | os.W_OK | os.X_OK
    if not os.access(where, access):
        which = "readable" if read_only else "writable"
        raise CliError(f"store directory {path!r} is not {which} by this user", EXIT_STORE)
    try:
        from backrun.storage.jsonfile import JsonFileStorage
    except ImportError as exc:  # pragma: no cover - the JSON store ships with backrun
        raise CliError(f"the JSON store is not available: {exc}", EXIT_STORE) from exc
    try:
        return JsonFileStorage(where, create=False)
    except StorageError as exc:
        raise CliError(f"cannot open store {path!r}: {exc}", EXIT_STORE) from exc
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot open store {path!r}: {_one_line(exc)}", EXIT_STORE) from exc


def engine_for_store(storage: Storage) -> Engine:
    """A bare engine over ``storage``: enough to inspect, cancel and retry jobs."""
    return Engine(storage, middleware=[])


def resolve_engine(
    app: str | None, store: str | None, injected: Engine | None, *, read_only: bool = False
) -> Engine:
    """The engine a ``jobs``/``stats`` command works on.

    Order: an engine handed in by a framework command, ``--store``, ``--app``,
    ``$BACKRUN_APP``, then the default store directory (``$BACKRUN_DIR`` or
    ``./.backrun``) if it exists.
    """
    if injected is not None:
        return injected
    if app and store:
        raise CliError("give --app or --store, not both", EXIT_USAGE)
    if store:
        return engine_for_store(open_store(store, read_only=read_only))
    spec = app or os.environ.get(APP_ENV)
    if spec:
        return load_engine(spec)
    default = os.environ.get("BACKRUN_DIR") or ".backrun"
    if Path(default).is_dir():
        return engine_for_store(open_store(default, read_only=read_only))
    raise CliError(
        f"no store: pass --store PATH or --app MODULE:ENGINE, or set {APP_ENV} "
        f"(no default store at {default!r})",
        EXIT_USAGE,
    )


def describe_store(storage: Storage) -> str:
    """A short human description of a store: its class and where it keeps jobs."""
    name = type(storage).__name__
    for attr in ("path", "root", "directory"):
        where = getattr(storage, attr, None)
        if where is not None:
            return f"{name} ({Path(where).resolve()})"
    schema = getattr(storage, "schema", None)
    return f"{name} (schema {schema})" if schema else name


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """Parse ``7d``, ``12h``, ``30m``, ``45s``, ``2w`` or a combination like ``1d12h``.

    Raises:
        ValueError: the text is not such a duration.
    """
    cleaned = text.strip().lower()
    matches = list(_DURATION.finditer(cleaned))
    if not matches or "".join(m.group(0) for m in matches).replace(" ", "") != cleaned.replace(
        " ", ""
    ):
        raise ValueError(f"not a duration: {text!r} (use e.g. 7d, 12h, 30m, 45s)")
    seconds = sum(float(m.group(1)) * _UNITS[m.group(2)] for m in matches)
    return timedelta(seconds=seconds)


def format_age(now: datetime, then: datetime | None) -> str:
    """``now - then`` as a short human duration (``42s``, ``3m10s``, ``2h05m``, ``3d4h``)."""
    if then is None:
        return "-"
    seconds = max((now - then).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h"


def table(rows: Sequence[Sequence[str]], out: IO[str]) -> None:
    """Print ``rows`` (the first is the header) as aligned columns."""
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


class Progress:
    """A one-line progress bar on a terminal; silent when the stream is not a TTY.

    Args:
        total: the number of steps expected (may grow with :meth:`grow`).
        label: what is being done, shown before the bar.
        stream: where to draw (default ``sys.stderr``).
    """

    WIDTH = 30

    def __init__(self, total: int, label: str, stream: IO[str] | None = None) -> None:
        self.total = max(total, 0)
        self.done = 0
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())

    def advance(self, steps: int = 1) -> None:
        """Record ``steps`` more done and redraw."""
        self.done += steps
        self.total = max(self.total, self.done)
        if self.enabled:
            filled = self.WIDTH * self.done // self.total if self.total else self.WIDTH
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
            self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
