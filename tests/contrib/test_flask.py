"""The Flask example end to end, and the extension's promises."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, current_app

import backrun
import backrun.limits
from backrun.contrib.flask import AppContextMiddleware, Backrun
from tests.cli.procs import Proc, run
from tests.helpers import wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flask_app"


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Any]:
    sys.path.insert(0, str(EXAMPLE))
    try:
        import shop

        yield shop
    finally:
        sys.path.remove(str(EXAMPLE))


def _config(tmp_path: Path) -> dict[str, str]:
    return {"BACKRUN_STORE": str(tmp_path / "store"), "OUTBOX": str(tmp_path / "outbox.txt")}


def _env(tmp_path: Path) -> dict[str, str]:
    return {f"FLASK_{key}": value for key, value in _config(tmp_path).items()}


def test_signup_request_is_run_by_flask_backrun_worker(shop: Any, tmp_path: Path) -> None:
    app = shop.create_app({"TESTING": True, **_config(tmp_path)})
    client = app.test_client()
    response = client.post("/signup", json={"email": "ada@example.com", "name": "Ada"})
    assert response.status_code == 202
    job_id = response.get_json()["job_id"]
    assert client.get(f"/jobs/{job_id}").get_json()["state"] == "queued"
    assert client.post("/signup", json={"email": "nope", "name": "X"}).status_code == 400

    worker = Proc(
        [sys.executable, "-m", "flask", "--app", "shop", "backrun", "worker", "--threads", "2"],
        cwd=EXAMPLE,
        env=_env(tmp_path),
    )
    try:
        worker.wait_for("ready: waiting for jobs")
        assert "threads:     2" in worker.output
        assert "    - send_welcome" in worker.output
        wait_until(
            lambda: client.get(f"/jobs/{job_id}").get_json()["state"] == "succeeded",
            what="the Flask job to succeed",
        )
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    finally:
        worker.kill()
    assert f"send_welcome[{job_id}] succeeded in" in worker.output
    assert (tmp_path / "outbox.txt").read_text() == "Welcome, Ada <ada@example.com>\n"

    listed = run(
        [sys.executable, "-m", "flask", "--app", "shop", "backrun", "jobs", "list", "--json"],
        cwd=EXAMPLE,
        env=_env(tmp_path),
    )
    assert listed.returncode == 0, listed.stderr
    assert [(j["id"], j["state"]) for j in json.loads(listed.stdout)] == [(job_id, "succeeded")]
    stats = run(
        [sys.executable, "-m", "flask", "--app", "shop", "backrun", "stats", "--json"],
        cwd=EXAMPLE,
        env=_env(tmp_path),
    )
    assert json.loads(stats.stdout)["queues"]["default"]["succeeded"] == 1
    missing = run(
        [sys.executable, "-m", "flask", "--app", "shop", "backrun", "jobs", "show", "0" * 32],
        cwd=EXAMPLE,
        env=_env(tmp_path),
    )
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: no job {'0' * 32} in this store"


def test_init_app_starts_nothing_and_jobs_run_in_the_app_context(tmp_path: Path) -> None:
    before = threading.active_count()
    store = tmp_path / "store"
    ext = Backrun()
    seen: list[str] = []

    @ext.handler(name="probe")
    def probe(payload: dict[str, int]) -> None:
        seen.append(current_app.name)

    app = Flask("probe_app")
    app.config.update(BACKRUN_STORE=str(store), BACKRUN_THREADS=2, BACKRUN_MAX_RETRIES=0)
    ext.init_app(app)
    assert threading.active_count() == before
    assert not store.exists()  # the engine (and its store) is built on first use
    assert "backrun" in app.cli.commands
    assert app.extensions["backrun"].extension is ext

    with app.app_context():
        engine = ext.engine
        ext.enqueue("probe", {"n": 1})
    assert store.is_dir()
    assert engine.threads == 2
    assert engine.retry_policy.max_retries == 0
    assert any(isinstance(m, AppContextMiddleware) for m in engine.middleware)
    engine.run_until_idle(timeout=10)
    assert seen == ["probe_app"]
    engine.close()


def test_engine_needs_init_app() -> None:
    ext = Backrun()
    with pytest.raises(RuntimeError, match="init_app"):
        ext.engine_for(Flask("other"))


def test_the_handler_decorator_takes_the_handler_limits(tmp_path: Path) -> None:
    ext = Backrun()

    @ext.handler(name="limited", max_concurrency=2, rate_limit=backrun.RateLimit(5, per=60))
    def limited(payload: dict[str, int]) -> None:
        return None

    app = Flask("limits_app")
    app.config.update(BACKRUN_STORE=str(tmp_path / "store"))
    ext.init_app(app)
    with app.app_context():
        engine = ext.engine
    spec = engine.registry.get("limited")
    assert spec.limits == backrun.limits.HandlerLimits(2, backrun.RateLimit(5, per=60))
    engine.close()
