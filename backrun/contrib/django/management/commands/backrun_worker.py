"""``manage.py backrun_worker``: the backrun worker for a Django project."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand

from backrun.cli._common import CliError, exit_on_error
from backrun.cli._worker import add_worker_arguments, options_from_namespace, run_worker
from backrun.contrib.django import get_engine
from backrun.contrib.django.conf import read_settings
from backrun.contrib.django.middleware import CloseOldConnectionsMiddleware


def _child_command() -> list[str]:
    """How a ``--processes`` child runs this command: ``manage.py`` if that started us.

    The settings module travels in ``$DJANGO_SETTINGS_MODULE``, which Django
    has set (from ``--settings`` too) by the time a command runs.
    """
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) == "manage.py" and os.path.isfile(script):
        return [sys.executable, os.path.abspath(script), "backrun_worker"]
    return [sys.executable, "-m", "django", "backrun_worker"]


class Command(BaseCommand):  # type: ignore[misc]
    """Run a worker until SIGTERM/SIGINT; the options mirror ``backrun worker``."""

    help = (
        "Run a backrun worker until SIGTERM/SIGINT (drains running jobs; a second Ctrl+C "
        "forces). Exit codes: 0 clean, 1 forced or crashed, 2 usage, 3 store unavailable."
    )
    # A bad setting or store is one "error:" line with the CLI's exit code (2, 3),
    # not a SystemCheckError listing; `manage.py check` reports them (E001, E002).
    requires_system_checks = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The same options as ``backrun worker``."""
        add_worker_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        """Build the engine from settings and run its worker in the foreground."""
        engine = exit_on_error(get_engine, usage_errors=(ImproperlyConfigured,))
        if not any(isinstance(m, CloseOldConnectionsMiddleware) for m in engine.middleware):
            engine.add_middleware(CloseOldConnectionsMiddleware())
        worker_options = options_from_namespace(options)
        if worker_options.metrics_port is None:
            worker_options.metrics_port = read_settings().get("METRICS_PORT")
        try:
            code = run_worker(
                engine,
                worker_options,
                app="Django settings.BACKRUN",
                child_command=_child_command(),
            )
        except CliError as exc:
            sys.stderr.write(f"error: {exc}\n")
            sys.exit(exc.code)
        if code:
            sys.exit(code)
