"""``backrun grafana export DIR``: write the dashboard, its provisioning and the alert rules.

The files ship inside the wheel (``backrun/observability/grafana/``), so a
``pip install backrun`` user gets them without a clone. The repository's
top-level ``grafana/`` holds the same files (a test keeps the two identical).
"""

from __future__ import annotations

import argparse
import json
import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import IO, Any

from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError

__all__ = ["add_parser", "cmd_export", "grafana_files"]

PACKAGE = "backrun.observability"
FOLDER = "grafana"


def grafana_files() -> dict[str, Traversable]:
    """Every shipped file by its relative path (``dashboards/backrun.json``, ...)."""
    found: dict[str, Traversable] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, name + "/")
            elif not child.name.startswith("."):
                found[name] = child

    walk(resources.files(PACKAGE).joinpath(FOLDER), "")
    return dict(sorted(found.items()))


def add_parser(sub: Any) -> None:
    """Add ``grafana export`` to the top-level subcommands."""
    grafana = sub.add_parser("grafana", help="export the Grafana dashboard and alert rules")
    actions = grafana.add_subparsers(dest="action", metavar="ACTION", parser_class=type(grafana))
    actions.required = True
    export = actions.add_parser(
        "export", help="write dashboards/, provisioning/ and alerts.yaml into DIR"
    )
    export.add_argument("directory", metavar="DIR", help="where to write (created if missing)")
    export.add_argument(
        "--force", action="store_true", help="overwrite files that exist and differ"
    )
    export.add_argument("--json", action="store_true", help="print JSON for scripts")


def cmd_export(ns: argparse.Namespace, out: IO[str]) -> int:
    """Copy the shipped files into ``ns.directory``; refuse to overwrite changed ones."""
    target = Path(ns.directory)
    if target.exists() and not target.is_dir():
        raise CliError(f"{ns.directory!r} exists and is not a directory", EXIT_USAGE)
    files = grafana_files()
    if not files:  # pragma: no cover - a broken install
        raise CliError("the Grafana files are missing from this backrun install", EXIT_FAILED)
    contents = {name: node.read_bytes() for name, node in files.items()}
    clashes = [
        name
        for name, data in contents.items()
        if (target / name).exists() and (target / name).read_bytes() != data
    ]
    if clashes and not ns.force:
        raise CliError(
            f"{len(clashes)} file(s) in {ns.directory!r} differ from backrun's "
            f"({', '.join(clashes)}); pass --force to overwrite",
            EXIT_FAILED,
        )
    written: list[str] = []
    try:
        for name, data in contents.items():
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and path.read_bytes() == data:
                continue
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            written.append(name)
    except OSError as exc:
        raise CliError(f"cannot write into {ns.directory!r}: {exc}", EXIT_FAILED) from None
    if ns.json:
        out.write(
            json.dumps(
                {"directory": str(target.resolve()), "files": list(contents), "written": written},
                indent=2,
            )
            + "\n"
        )
        return EXIT_OK
    out.write(f"wrote {len(written)} of {len(contents)} file(s) into {target.resolve()}:\n")
    for name in contents:
        out.write(f"  {name}{'' if name in written else ' (unchanged)'}\n")
    out.write(
        "next: import dashboards/backrun.json in Grafana (or mount provisioning/), "
        "and load alerts.yaml into Prometheus' rule_files\n"
    )
    return EXIT_OK
