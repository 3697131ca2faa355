"""CSRF protection for the dashboard served as a plain WSGI app (Flask or a server).

A random value lives in an ``HttpOnly``, ``SameSite=Strict`` cookie; every
form carries an HMAC of it under the dashboard's secret. A POST is accepted
only with the cookie and its matching token, and, when the browser says
where the request came from (``Origin``, ``Sec-Fetch-Site``), only from the
same site. Django mounts use Django's own CSRF protection instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from http.cookies import SimpleCookie
from typing import Any

__all__ = ["COOKIE", "FIELD", "CsrfGuard"]

COOKIE = "backrun_csrf"
FIELD = "csrf_token"


class CsrfGuard:
    """Issues and checks the tokens of one dashboard.

    Args:
        secret: the HMAC key; random per process when not given (tokens then
            last as long as the process).
    """

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def _sign(self, value: str) -> str:
        return hmac.new(self._secret, value.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def _cookie(environ: Mapping[str, Any]) -> str | None:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(str(environ.get("HTTP_COOKIE") or ""))
        except Exception:
            return None
        morsel = jar.get(COOKIE)
        value = None if morsel is None else morsel.value
        if value is None or len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
            return None
        return value

    def token(self, environ: Mapping[str, Any], root: str) -> tuple[str, str | None]:
        """Return the token for this browser, and a ``Set-Cookie`` value if it needs a cookie."""
        value = self._cookie(environ)
        set_cookie = None
        if value is None:
            value = secrets.token_hex(16)
            secure = "; Secure" if environ.get("wsgi.url_scheme") == "https" else ""
            set_cookie = f"{COOKIE}={value}; Path={root or '/'}; HttpOnly; SameSite=Strict{secure}"
        return self._sign(value), set_cookie

    def check(self, environ: Mapping[str, Any], form: Mapping[str, str]) -> bool:
        """True if a POST carries this browser's token and comes from the same site."""
        if str(environ.get("HTTP_SEC_FETCH_SITE") or "same-origin") not in (
            "same-origin",
            "none",
        ):
            return False
        origin = environ.get("HTTP_ORIGIN")
        if origin and origin != "null":
            scheme = environ.get("wsgi.url_scheme", "http")
            host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
            if origin != f"{scheme}://{host}":
                return False
        value = self._cookie(environ)
        sent = form.get(FIELD, "")
        return value is not None and hmac.compare_digest(self._sign(value), sent)
