"""``--processes`` from ``flask backrun worker`` and ``manage.py backrun_worker``: children
run the same framework command (the app and settings reach them), one banner, clean exit."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.procs import REPO, Proc
from tests.helpers import wait_until

EXAMPLES = REPO / "examples"


@pytest.fixture
def shop() -> Iterator[Any]:
    pytest.importorskip("flask")
    sys.path.insert(0, str(EXAMPLES / "flask_app"))
    try:
        import shop

        yield shop
    finally:
        sys.path.remove(str(EXAMPLES / "flask_app"))


def test_flask_backrun_worker_processes(shop: Any, tmp_path: Path) -> None:
    config = {"BACKRUN_STORE": str(tmp_path / "store"), "OUTBOX": str(tmp_path / "outbox.txt")}
    app = shop.create_app({"TESTING": True, **config})
    client = app.test_client()
    response = client.post("/signup", json={"email": "ada@example.com", "name": "Ada"})
    job_id = response.get_json()["job_id"]
    args = [sys.executable, "-m", "flask", "--app", "shop", "backrun", "worker"]
    worker = Proc(
        [*args, "--processes", "2", "--threads", "1"],
        cwd=EXAMPLES / "flask_app",
        env={f"FLASK_{key}": value for key, value in config.items()},
    )
    try:
        worker.wait_for(r"supervisor pid \d+ starting 2 worker process", timeout=20)
        wait_until(
            lambda: client.get(f"/jobs/{job_id}").get_json()["state"] == "succeeded",
            timeout=20,
            what="the Flask job to succeed in a child",
        )
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    finally:
        worker.kill()
    assert worker.output.count("backrun 0.1.0 worker") == 1  # the parent's banner only
    assert "  processes:   2 x 1 threads (2 jobs at once)" in worker.output
    assert worker.output.count("ready: waiting for jobs") == 2


def test_manage_py_backrun_worker_processes(tmp_path: Path) -> None:
    pytest.importorskip("django")
    env = {
        "MYSITE_VAR_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "testsite_settings",
        "PYTHONPATH": os.pathsep.join(
            [str(REPO / "tests" / "contrib" / "django_support"), str(REPO)]
        ),
    }
    worker = Proc(
        [sys.executable, "manage.py", "backrun_worker", "--processes", "2", "--threads", "1"],
        cwd=EXAMPLES / "django_site",
        env=env,
    )
    try:
        worker.wait_for(r"supervisor pid \d+ starting 2 worker process", timeout=20)
        wait_until(
            lambda: worker.output.count("ready: waiting for jobs") == 2,
            timeout=25,
            what="both Django children to be ready",
        )
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    finally:
        worker.kill()
    assert "  app:         Django settings.BACKRUN" in worker.output
    assert "  processes:   2 x 1 threads (2 jobs at once)" in worker.output
    assert "stopped cleanly (0 child restart(s))" in worker.output
