"""A jobs dashboard for operators: ``Dashboard(engine)`` is a WSGI application.

Needs the ``web`` extra (``pip install 'backrun[web]'``, Jinja2). Pages are
rendered on the server; every asset ships in this package and works offline.
Mount it in Django with ``path("ops/jobs/", include("backrun.contrib.django.urls"))``,
in Flask with ``Backrun(app, dashboard="/ops/jobs", dashboard_auth=...)``, or
serve it with ``backrun dashboard MODULE:ENGINE``.
"""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"backrun.web needs Jinja2: pip install 'backrun[web]' ({exc})") from exc

from ._app import CsrfField, Dashboard
from ._http import Request, Response
from ._serve import BasicAuth, DashboardServer, serve

__all__ = ["BasicAuth", "CsrfField", "Dashboard", "DashboardServer", "Request", "Response", "serve"]
