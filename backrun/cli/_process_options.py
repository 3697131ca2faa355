"""The ``--processes`` family of worker options, and the command line a child is started with."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._worker import WorkerOptions

__all__ = ["add_process_arguments", "child_arguments", "supervised"]


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_process_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--processes``, ``--max-jobs-per-child``, ``--max-memory-per-child``, ``--reload``."""
    parser.add_argument(
        "--processes",
        type=_count,
        metavar="N",
        help="run N supervised child processes, each with --threads slots (restarted if they die)",
    )
    parser.add_argument(
        "--max-jobs-per-child",
        type=_count,
        metavar="K",
        help="replace a child after it ran K jobs (it finishes its running jobs first)",
    )
    parser.add_argument(
        "--max-memory-per-child",
        type=_count,
        metavar="MB",
        help="replace a child once its resident memory exceeds MB megabytes",
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="development only: restart the worker when a .py file under the current "
        "directory changes (needs backrun[reload])",
    )


def supervised(options: WorkerOptions) -> bool:
    """True when the options ask for a supervising parent rather than one in-process worker."""
    return (
        options.processes is not None
        or options.max_jobs_per_child is not None
        or options.max_memory_per_child is not None
        or options.reload
    )


def child_arguments(options: WorkerOptions, threads: int) -> list[str]:
    """The worker options a child is started with (no metrics port: the parent serves them)."""
    args = ["--threads", str(threads), "--log-format", options.log_format]
    if options.queues is not None:
        args += ["--queues", ",".join(options.queues)]
    if options.shutdown_timeout is not None:
        args += ["--shutdown-timeout", repr(options.shutdown_timeout)]
    if options.max_jobs_per_child is not None:
        args += ["--max-jobs-per-child", str(options.max_jobs_per_child)]
    if options.max_memory_per_child is not None:
        args += ["--max-memory-per-child", str(options.max_memory_per_child)]
    return args


def child_command(prefix: Sequence[str], options: WorkerOptions, threads: int) -> list[str]:
    """``prefix`` (how this front end runs one worker) followed by the child's options."""
    return [*prefix, *child_arguments(options, threads)]
