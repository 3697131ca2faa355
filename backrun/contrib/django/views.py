"""The dashboard as a Django view: staff only, protected by Django's own CSRF middleware.

``path("ops/jobs/", include("backrun.contrib.django.urls"))`` mounts it; the
engine is the project's (``get_engine()``). For other rules, build your own
URL patterns with :func:`dashboard_patterns`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.urls import URLPattern, path, re_path
from django.views.decorators.csrf import csrf_protect

__all__ = ["dashboard_patterns", "dashboard_view"]

_SKIP = frozenset({"content-type", "content-length"})
_lock = threading.Lock()
_dashboards: dict[bool, Any] = {}


def _dashboard(read_only: bool) -> Any:
    from backrun.web import Dashboard

    from . import get_engine

    engine = get_engine()
    with _lock:
        dashboard = _dashboards.get(read_only)
        if dashboard is None or dashboard.engine is not engine:  # the engine was rebuilt
            dashboard = _dashboards[read_only] = Dashboard(engine, read_only=read_only)
        return dashboard


def dashboard_view(
    *,
    read_only: bool = False,
    guard: Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]] | None = None,
) -> Callable[..., HttpResponse]:
    """Build the dashboard view; ``guard`` decides who may see it (default: staff only).

    The view is always CSRF-protected by Django, whatever ``guard`` is.
    """

    def view(request: HttpRequest, subpath: str = "") -> HttpResponse:
        from backrun.web import CsrfField, Request

        root = request.path[: len(request.path) - len(subpath)].rstrip("/")
        source = request.POST if request.method == "POST" else {}
        answer = _dashboard(read_only).handle(
            Request(
                method=request.method or "GET",
                path="/" + subpath,
                root=root,
                query={k: request.GET.get(k, "") for k in request.GET},
                form={k: source.get(k, "") for k in source},
            ),
            csrf=CsrfField("csrfmiddlewaretoken", get_token(request)),
        )
        response = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
        for key, value in answer.all_headers():
            if key.lower() not in _SKIP:
                response[key] = value
        return response

    protected = csrf_protect(view)
    return (guard or staff_member_required)(protected)


def dashboard_patterns(*, read_only: bool = False, guard: Any = None) -> list[URLPattern]:
    """URL patterns for the dashboard, to ``include`` under a prefix of your choice."""
    view = dashboard_view(read_only=read_only, guard=guard)
    return [
        path("", view, name="overview"),
        re_path(r"^(?P<subpath>.+)$", view, name="page"),
    ]
