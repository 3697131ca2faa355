"""Extensions, created unbound so handlers and views can import them."""

import hmac

from flask import Response, current_app, request

from backrun.contrib.flask import Backrun


def ops_only() -> bool | Response:
    """Who may use the jobs dashboard: user ``ops`` with the ``OPS_PASSWORD`` config.

    HTTP Basic keeps the example short; put your own login check here.
    """
    password = current_app.config.get("OPS_PASSWORD")
    auth = request.authorization
    if password and auth is not None and auth.username == "ops":
        return hmac.compare_digest((auth.password or "").encode(), str(password).encode())
    return Response("Log in as ops.\n", 401, {"WWW-Authenticate": 'Basic realm="shop ops"'})


jobs = Backrun(dashboard="/ops/jobs", dashboard_auth=ops_only)
