"""A minimal Flask app for the command tests; its handler logs through ``current_app.logger``.

``TINY_INSTANCE``: the instance folder; ``TINY_STORE``: BACKRUN_STORE (may be
relative); ``TEST_NO_OTEL``: make the ``otel`` extra look uninstalled.
"""

from __future__ import annotations

import os

if os.environ.get("TEST_NO_OTEL"):
    import no_otel_sdk  # noqa: F401

from flask import Flask, current_app

from backrun.contrib.flask import Backrun

jobs = Backrun()


@jobs.handler(name="hello")
def hello(payload: dict[str, int]) -> None:
    """Log like the docs tell Flask users to."""
    current_app.logger.info("hello from flask %d", payload["n"])


def create_app() -> Flask:
    """The factory ``flask --app tinyapp`` finds."""
    app = Flask(__name__, instance_path=os.environ["TINY_INSTANCE"])
    app.logger.info("app created")  # Flask attaches its own handler on first use
    if os.environ.get("TINY_STORE"):
        app.config["BACKRUN_STORE"] = os.environ["TINY_STORE"]
    jobs.init_app(app)
    return app
