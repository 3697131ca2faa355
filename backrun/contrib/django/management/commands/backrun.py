"""``manage.py backrun jobs ...`` / ``manage.py backrun stats``: the CLI on the project's engine."""

from __future__ import annotations

import sys

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand

from backrun.cli import main as cli_main
from backrun.cli._common import exit_on_error
from backrun.contrib.django import get_engine


class Command(BaseCommand):  # type: ignore[misc]
    """Pass the arguments to the ``backrun`` CLI, working on the project's engine."""

    help = (
        "Inspect and steer jobs: jobs list|show|retry|cancel|purge, stats, worker "
        "(the backrun CLI on settings.BACKRUN; see 'manage.py backrun --help')."
    )
    # Errors are the CLI's one line and exit code; `manage.py check` runs the checks.
    requires_system_checks = ()

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand everything after ``backrun`` to the CLI's own parser.

        ``--settings`` and ``--pythonpath`` were applied by ``manage.py`` already.
        """
        args: list[str] = []
        skip = False
        for arg in argv[2:]:
            if skip:
                skip = False
            elif arg in ("--settings", "--pythonpath"):
                skip = True
            elif not arg.startswith(("--settings=", "--pythonpath=")):
                args.append(arg)
        engine = exit_on_error(get_engine, usage_errors=(ImproperlyConfigured,))
        sys.exit(cli_main(args, engine=engine, prog=f"{argv[0]} backrun"))
