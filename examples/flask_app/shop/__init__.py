"""A small Flask shop whose sign-up view enqueues a welcome mail for the worker."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from .extensions import jobs


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The application factory (``flask --app shop run`` finds it)."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.update(
        BACKRUN_STORE=os.path.join(app.instance_path, "backrun"),
        OUTBOX=os.path.join(app.instance_path, "outbox.txt"),
    )
    app.config.from_prefixed_env()  # e.g. FLASK_BACKRUN_STORE=/srv/jobs
    app.config.update(config or {})

    jobs.init_app(app)  # starts nothing; `flask --app shop backrun worker` runs the jobs

    from . import tasks, views  # noqa: F401  (registers handlers and routes)

    app.register_blueprint(views.bp)
    return app
