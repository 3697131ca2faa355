"""When the worker options ask for child processes, and the command line a child is started with.

The ``--processes`` family of flags is declared with every other worker
setting, in :mod:`backrun.settings`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._worker import WorkerOptions

__all__ = ["child_arguments", "supervised"]


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
