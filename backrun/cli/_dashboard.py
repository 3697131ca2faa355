"""``backrun dashboard MODULE:ENGINE``: serve the web dashboard from this process."""

from __future__ import annotations

import argparse
import os
from typing import IO, Any

from backrun.engine import Engine

from ._common import EXIT_OK, EXIT_USAGE, CliError

__all__ = ["add_dashboard_command", "cmd_dashboard"]

PASSWORD_ENV = "BACKRUN_DASHBOARD_PASSWORD"


def add_dashboard_command(sub: Any) -> None:
    """Add ``backrun dashboard`` to the standalone CLI."""
    parser = sub.add_parser(
        "dashboard", help="serve the jobs dashboard (http://127.0.0.1:8080/ by default)"
    )
    parser.add_argument(
        "app",
        nargs="?",
        metavar="MODULE:ENGINE",
        help="the engine whose store to show (default: --store, $BACKRUN_APP, ./.backrun)",
    )
    parser.add_argument("--store", metavar="PATH", help="a JSON store directory to show instead")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    parser.add_argument(
        "--basic-auth",
        metavar="USER[:PASSWORD]",
        help=f"require HTTP Basic auth; the password may come from ${PASSWORD_ENV} instead",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="show no actions and refuse every change"
    )
    parser.set_defaults(run=cmd_dashboard, json=False)


def _credentials(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep:
        password = os.environ.get(PASSWORD_ENV, "")
    if not user or not password:
        raise CliError(
            f"--basic-auth needs USER:PASSWORD, or USER with ${PASSWORD_ENV} set", EXIT_USAGE
        )
    return user, password


def cmd_dashboard(engine: Engine, ns: argparse.Namespace, out: IO[str]) -> int:
    """Serve the dashboard until Ctrl+C."""
    try:
        from backrun.web import BasicAuth, Dashboard, serve
        from backrun.web._serve import is_loopback
    except ImportError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    credentials = _credentials(ns.basic_auth)
    if credentials is None and not is_loopback(ns.host):
        raise CliError(
            f"refusing to serve the dashboard on {ns.host} without authentication: "
            "add --basic-auth USER:PASSWORD (behind TLS), or bind 127.0.0.1",
            EXIT_USAGE,
        )
    if not 0 <= ns.port <= 65535:
        raise CliError(f"--port must be 0-65535, not {ns.port}", EXIT_USAGE)
    app: Any = Dashboard(engine, read_only=ns.read_only)
    if credentials is not None:
        app = BasicAuth(app, *credentials)
    try:
        server = serve(app, host=ns.host, port=ns.port, background=False)
    except OSError as exc:
        raise CliError(f"cannot listen on {ns.host}:{ns.port}: {exc}", EXIT_USAGE) from None
    out.write(f"backrun dashboard on {server.url} (Ctrl+C to stop)\n")
    out.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return EXIT_OK
