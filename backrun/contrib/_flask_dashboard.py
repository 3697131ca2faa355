"""The dashboard in a Flask app: ``Backrun(app, dashboard="/ops/jobs", dashboard_auth=...)``.

``dashboard_auth`` is called on every request to the dashboard, inside the
request context (so it can look at ``flask.request``, ``flask_login``'s
``current_user``...); a false result answers 403, and a response it returns
(say a redirect to your login page) is sent as it is. The dashboard keeps its
own CSRF tokens, so Flask needs no CSRF extension for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, abort, request
from werkzeug.wrappers import Response as BaseResponse

from backrun.engine import Engine

__all__ = ["mount_dashboard"]

_SKIP = frozenset({"content-type", "content-length"})


def mount_dashboard(
    app: Flask,
    engine_for: Callable[[Flask], Engine],
    *,
    prefix: str,
    auth: Callable[[], object],
    read_only: bool = False,
) -> None:
    """Serve the dashboard under ``prefix`` of ``app``, behind ``auth``.

    Raises:
        ValueError: ``prefix`` is not a path like ``/ops/jobs``.
        TypeError: ``auth`` is not callable.
    """
    if not callable(auth):
        raise TypeError("dashboard_auth must be a callable returning True for allowed requests")
    mount = "/" + prefix.strip("/")
    if mount == "/" or not prefix.startswith("/"):
        raise ValueError(
            f"dashboard must be a path below the site root, like /ops/jobs: {prefix!r}"
        )
    lock = threading.Lock()
    built: list[Any] = []

    def dashboard() -> Any:
        with lock:
            if not built:
                from backrun.web import Dashboard

                built.append(Dashboard(engine_for(app), read_only=read_only))
            return built[0]

    def view(subpath: str = "") -> BaseResponse:
        allowed = auth()
        if isinstance(allowed, BaseResponse):
            return allowed
        if not allowed:
            abort(403)
        environ = dict(request.environ)
        environ["SCRIPT_NAME"] = request.script_root + mount
        environ["PATH_INFO"] = "/" + subpath
        # Flask may have read the body already (a before_request hook): use its parse.
        form = request.form.to_dict(flat=True) if request.method == "POST" else None
        answer = dashboard().respond_wsgi(environ, form=form)
        headers = [(k, v) for k, v in answer.all_headers() if k.lower() not in _SKIP]
        return Response(
            answer.body, status=answer.status, headers=headers, content_type=answer.content_type
        )

    methods = ["GET", "HEAD", "POST"]
    app.add_url_rule(
        mount + "/", "backrun_dashboard", view, methods=methods, defaults={"subpath": ""}
    )
    app.add_url_rule(mount + "/<path:subpath>", "backrun_dashboard_page", view, methods=methods)
