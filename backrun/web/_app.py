"""The dashboard: routes, actions and rendering, plus its plain-WSGI entry point."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import jinja2

from backrun.engine import Engine
from backrun.enqueueing import check_queue
from backrun.errors import JobNotFound, StorageError
from backrun.jobs import FINISHED_STATES, JobState, check_job_id

from . import _pages
from ._csrf import FIELD, CsrfGuard
from ._format import ago, exact
from ._http import Request, Response, form_from_environ, request_from_environ

__all__ = ["CsrfField", "Dashboard"]

log = logging.getLogger("backrun.web")

StartResponse = Callable[..., Any]

_STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_MESSAGES = {
    "retried": "The job is queued to run again.",
    "cancelled": "The job is cancelled.",
    "cancel-requested": "Cancellation requested: the worker stops the job at its next check.",
    "paused": "The queue is paused: workers take none of its jobs until it is resumed.",
    "resumed": "The queue is resumed.",
    "retried-dead": "The queue's dead jobs are queued to run again.",
    "purged": "Finished jobs purged.",
}
_PURGE_AGES = {"0": timedelta(0), "1h": timedelta(hours=1), "1d": timedelta(days=1)}
_PURGE_AGES["7d"] = timedelta(days=7)
_PURGE_STATES = {
    "finished": FINISHED_STATES,
    **{s.value: frozenset({s}) for s in FINISHED_STATES},
}


@dataclass(frozen=True)
class CsrfField:
    """The hidden form field that carries a CSRF token: its name and value."""

    name: str
    value: str


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Dashboard:
    """A jobs dashboard for operators, as a WSGI application.

    Serve it with any WSGI server, or mount it in Django
    (``backrun.contrib.django.urls``) or Flask (``Backrun(app, dashboard=...)``).
    Served directly, it protects its forms with its own CSRF tokens.

    Args:
        engine: the engine whose store it shows.
        read_only: show no actions and refuse every POST.
        secret: the key for CSRF tokens (random per process by default).
        page_size: jobs per page of the jobs list.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        read_only: bool = False,
        secret: bytes | None = None,
        page_size: int = 50,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.engine = engine
        self.read_only = read_only
        self.page_size = page_size
        self.csrf = CsrfGuard(secret)
        self._templates = jinja2.Environment(
            loader=jinja2.PackageLoader("backrun.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    # -- WSGI -----------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Answer one WSGI request."""
        response = self.respond_wsgi(environ)
        start_response(response.status_line, response.all_headers())
        return [response.body]

    def respond_wsgi(
        self, environ: Mapping[str, Any], *, form: Mapping[str, str] | None = None
    ) -> Response:
        """Answer a WSGI environ with this dashboard's own CSRF protection.

        ``form``: the POST fields, when a framework has parsed the body already.
        """
        if form is None and str(environ.get("REQUEST_METHOD", "GET")).upper() == "POST":
            form = form_from_environ(environ)
        elif form is None:
            form = {}
        request = request_from_environ(environ, form or {})
        token, set_cookie = self.csrf.token(environ, request.root)
        csrf = CsrfField(FIELD, token)
        if form is None:
            response = self._error(request, csrf, 400, "The form could not be read.")
        elif request.method == "POST" and not self.read_only and not self.csrf.check(environ, form):
            response = self._error(
                request, csrf, 403, "The form's security token is missing or stale: reload."
            )
        else:
            response = self.handle(request, csrf=csrf)
        if set_cookie is not None:
            response.headers.append(("Set-Cookie", set_cookie))
        return response

    # -- routing ----------------------------------------------------------------

    def handle(self, request: Request, *, csrf: CsrfField) -> Response:
        """Answer a request whose CSRF token (if a POST) the caller has checked."""
        try:
            return self._route(request, csrf)
        except _Refused as exc:
            return self._error(request, csrf, exc.status, str(exc))
        except JobNotFound:
            return self._error(request, csrf, 404, "There is no such job.")
        except StorageError as exc:
            log.warning("dashboard: store unavailable: %s", exc)
            return self._error(request, csrf, 503, f"The job store is unavailable: {exc}")

    def _route(self, request: Request, csrf: CsrfField) -> Response:
        parts = [p for p in request.path.split("/") if p]
        if parts[:1] == ["static"] and len(parts) == 2:
            return self._static(parts[1])
        action = _action_of(parts)
        if action is not None:
            return self._action(request, csrf, *action)
        if request.method not in ("GET", "HEAD"):
            raise _Refused(405, "This page only answers GET.")
        ctx: dict[str, Any] | None
        if not parts:
            return self._render(request, csrf, "overview.html", _pages.overview_page(self.engine))
        if parts == ["jobs"]:
            wanted = request.query.get("id", "").strip().lower()
            if wanted:
                return _redirect(request, f"/jobs/{quote(wanted)}")
            try:
                ctx = _pages.jobs_page(self.engine, request.query, page_size=self.page_size)
            except ValueError as exc:
                raise _Refused(400, str(exc)) from None
            return self._render(request, csrf, "jobs.html", ctx)
        if len(parts) == 2 and parts[0] == "jobs":
            ctx = _pages.job_page(self.engine, parts[1])
            if ctx is None:
                raise _Refused(404, "There is no job with this id.")
            return self._render(request, csrf, "job.html", ctx)
        if parts == ["workers"]:
            return self._render(request, csrf, "workers.html", _pages.workers_page(self.engine))
        if parts == ["queues"]:
            return self._render(request, csrf, "queues.html", _pages.queues_page(self.engine))
        if parts == ["schedules"] and _pages.has_schedules(self.engine):
            ctx = _pages.schedules_page(self.engine)
            return self._render(request, csrf, "schedules.html", ctx)
        raise _Refused(404, "There is no such page.")

    # -- actions ------------------------------------------------------------------

    def _action(self, request: Request, csrf: CsrfField, kind: str, target: str) -> Response:
        if self.read_only:
            raise _Refused(403, "This dashboard is read-only.")
        if request.method not in ("GET", "HEAD", "POST"):
            raise _Refused(405, "Actions are POST requests.")
        if request.method != "POST" or request.form.get("confirm") != "yes":
            # Never acts on GET; a POST without confirmation (no JavaScript) asks first.
            return self._render(
                request,
                csrf,
                "confirm.html",
                {"kind": kind, "target": target, "form": dict(request.form)},
            )
        engine = self.engine
        if kind in ("retry", "cancel"):
            if kind == "retry":
                try:
                    engine.retry(target)
                except ValueError as exc:
                    raise _Refused(409, str(exc)) from None
                code = "retried"
            else:
                job = engine.cancel(target)
                code = "cancel-requested" if job.state is JobState.RUNNING else "cancelled"
            return _redirect(request, f"/jobs/{target}", msg=code)
        if kind == "pause":
            engine.pause(target)
            return _redirect(request, "/queues", msg="paused")
        if kind == "resume":
            engine.resume(target)
            return _redirect(request, "/queues", msg="resumed")
        if kind == "retry-dead":
            count = _retry_dead(engine, target)
            return _redirect(request, "/queues", msg="retried-dead", n=str(count))
        states = _PURGE_STATES.get(request.form.get("state", ""))
        age = _PURGE_AGES.get(request.form.get("older_than", ""))
        if states is None or age is None:
            raise _Refused(400, "Choose which finished jobs to purge and how old.")
        count = engine.storage.purge(before=engine.clock.now() - age, states=states)
        return _redirect(request, "/queues", msg="purged", n=str(count))

    # -- rendering ----------------------------------------------------------------

    def _render(
        self, request: Request, csrf: CsrfField, name: str, ctx: dict[str, Any], status: int = 200
    ) -> Response:
        now = ctx.get("now") or self.engine.clock.now()

        def url(path: str, **query: object) -> str:
            fields = {k: str(v) for k, v in query.items() if v not in (None, "")}
            return request.root + path + ("?" + urlencode(fields) if fields else "")

        message = _MESSAGES.get(request.query.get("msg", ""))
        count = request.query.get("n", "")
        if message and count.isdigit():
            message = f"{message} ({int(count)} jobs)"
        html = self._templates.get_template(name).render(
            ctx,
            now=now,
            url=url,
            ago=lambda moment: ago(moment, now),
            exact=exact,
            csrf=csrf,
            read_only=self.read_only,
            message=message,
            path=request.path,
            store=type(self.engine.storage).__name__,
            with_schedules=_pages.has_schedules(self.engine),
        )
        return Response(status, html.encode())

    def _error(self, request: Request, csrf: CsrfField, status: int, message: str) -> Response:
        ctx = {"status": status, "error": message}
        return self._render(request, csrf, "error.html", ctx, status=status)

    @staticmethod
    def _static(name: str) -> Response:
        ctype = _STATIC.get(name)
        if ctype is None:
            raise _Refused(404, "There is no such file.")
        body = resources.files("backrun.web").joinpath("static", name).read_bytes()
        return Response(200, body, content_type=ctype, cache="public, max-age=3600")


def _action_of(parts: list[str]) -> tuple[str, str] | None:
    """``(kind, target)`` for an action URL, else ``None``; malformed targets give 404."""
    if len(parts) == 3 and parts[0] == "jobs" and parts[2] in ("retry", "cancel"):
        try:
            return parts[2], check_job_id(parts[1])
        except ValueError:
            raise _Refused(404, "There is no job with this id.") from None
    if len(parts) == 3 and parts[0] == "queues" and parts[2] in ("pause", "resume", "retry-dead"):
        try:
            return parts[2], check_queue(parts[1])
        except ValueError:
            raise _Refused(404, "There is no such queue.") from None
    if parts == ["purge"]:
        return "purge", ""
    return None


def _retry_dead(engine: Engine, queue: str) -> int:
    """Retry every DEAD job of ``queue``, a batch at a time; each job at most once."""
    seen: set[str] = set()
    while True:
        batch = engine.storage.find(state=JobState.DEAD, queue=queue, limit=500)
        fresh = [j for j in batch if j.id not in seen]
        if not fresh:
            return len(seen)
        for job in fresh:
            seen.add(job.id)
            try:
                engine.retry(job.id)
            except (ValueError, JobNotFound):
                continue  # changed meanwhile


def _redirect(request: Request, path: str, **query: str) -> Response:
    location = request.root + path + ("?" + urlencode(query) if query else "")
    return Response(303, b"", headers=[("Location", location)])
