"""The dashboard's framework-neutral request and response, and their WSGI translation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["MAX_FORM_BYTES", "Request", "Response", "form_from_environ", "request_from_environ"]

MAX_FORM_BYTES = 64 * 1024
"""Largest POST body read; the dashboard's forms hold a few short fields."""

_REASONS = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    500: "Internal Server Error",
}


@dataclass(frozen=True)
class Request:
    """One request, as the dashboard sees it.

    Attributes:
        method: ``GET``, ``POST``, ...
        path: the path below the mount point, starting with ``/``.
        root: the URL prefix of the mount point, without a trailing slash.
        query: the query string's fields (the first value of each).
        form: the POST body's fields (empty for other methods).
    """

    method: str
    path: str
    root: str = ""
    query: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Response:
    """What the dashboard answers; adapters turn it into their framework's response."""

    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    cache: str = "no-store"

    @property
    def status_line(self) -> str:
        """``"200 OK"`` and the like, for WSGI."""
        return f"{self.status} {_REASONS.get(self.status, 'Unknown')}"

    def all_headers(self) -> list[tuple[str, str]]:
        """Content type, length and security headers, then the response's own."""
        return [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "same-origin"),
            ("Cache-Control", self.cache),
            (
                "Content-Security-Policy",
                "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            *self.headers,
        ]


def _first(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key, value)
    return fields


def form_from_environ(environ: Mapping[str, Any]) -> dict[str, str] | None:
    """Read a urlencoded POST body; ``None`` when it is too large or not a form."""
    ctype = str(environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length > MAX_FORM_BYTES:
        return None
    if length == 0:
        return {}
    if ctype != "application/x-www-form-urlencoded":
        return None
    body = environ["wsgi.input"].read(length)
    return _first(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def request_from_environ(environ: Mapping[str, Any], form: Mapping[str, str]) -> Request:
    """Build a :class:`Request` from a WSGI environ (the body already read into ``form``)."""
    raw_path = str(environ.get("PATH_INFO") or "/")
    # PEP 3333 hands the path over as latin-1 decoded bytes.
    path = raw_path.encode("latin-1", "replace").decode("utf-8", "replace") or "/"
    query = _first(parse_qsl(str(environ.get("QUERY_STRING") or ""), keep_blank_values=True))
    return Request(
        method=str(environ.get("REQUEST_METHOD") or "GET").upper(),
        path=path,
        root=str(environ.get("SCRIPT_NAME") or "").rstrip("/"),
        query=query,
        form=form,
    )
