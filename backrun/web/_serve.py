"""Serving the dashboard without a framework: HTTP Basic auth and a threaded WSGI server."""

from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ._app import StartResponse

__all__ = ["BasicAuth", "DashboardServer", "is_loopback", "serve"]

log = logging.getLogger("backrun.web")

WsgiApp = Any


class BasicAuth:
    """WSGI middleware: every request must carry this user name and password (HTTP Basic).

    Use it behind TLS (a reverse proxy) anywhere but on a trusted network.
    """

    def __init__(
        self, app: WsgiApp, username: str, password: str, *, realm: str = "backrun"
    ) -> None:
        if not username or not password:
            raise ValueError("basic auth needs a user name and a password")
        self.app = app
        self.realm = realm
        self._expected = b"Basic " + base64.b64encode(f"{username}:{password}".encode())

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Pass authenticated requests on; answer 401 to the rest."""
        sent = str(environ.get("HTTP_AUTHORIZATION") or "").encode("latin-1", "replace")
        if hmac.compare_digest(sent, self._expected):
            result: Iterable[bytes] = self.app(environ, start_response)
            return result
        body = b"Authentication required.\n"
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("WWW-Authenticate", f'Basic realm="{self.realm}", charset="UTF-8"'),
            ],
        )
        return [body]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard: " + format, *args)


class DashboardServer:
    """A running server: ``url``, ``port``, and ``close()``."""

    def __init__(self, server: WSGIServer, thread: threading.Thread | None) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.port = int(port)
        text = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{text}]" if ":" in text else text
        self.url = f"http://{shown}:{self.port}/"

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`close` is called from another."""
        self._server.serve_forever(poll_interval=0.2)

    def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def serve(
    app: WsgiApp, *, host: str = "127.0.0.1", port: int = 8080, background: bool = True
) -> DashboardServer:
    """Serve a WSGI app (the dashboard) on a threaded server; ``port=0`` picks a free port.

    With ``background``, requests are answered on a daemon thread and this
    returns at once; otherwise call :meth:`DashboardServer.serve_forever`.
    """
    server = make_server(
        host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    thread = None
    if background:
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="backrun-dashboard",
            daemon=True,
        )
        thread.start()
    return DashboardServer(server, thread)
