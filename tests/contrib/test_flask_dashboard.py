"""The dashboard mounted in Flask: the auth callable on every request, CSRF, the example."""

from __future__ import annotations

import base64
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import backrun
from backrun.jobs import Job, JobState

flask = pytest.importorskip("flask")
pytest.importorskip("jinja2")

from backrun.contrib.flask import Backrun  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flask_app"


class Gate:
    """An auth callable that counts its calls and answers what the test says."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.allow = True

    def __call__(self) -> bool:
        self.calls.append(f"{flask.request.method} {flask.request.path}")
        return self.allow


@pytest.fixture
def mounted() -> tuple[Any, Gate, backrun.Engine, Job]:
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[])
    engine.handler(name="noop")(lambda payload: None)
    job = engine.cancel(engine.enqueue("noop", {}).id)
    gate = Gate()
    app = flask.Flask(__name__)
    Backrun(app, engine=engine, dashboard="/ops/jobs", dashboard_auth=gate)
    return app, gate, engine, job


def token_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert match is not None
    return match.group(1)


def test_the_auth_callable_runs_on_every_request(mounted: Any) -> None:
    app, gate, engine, job = mounted
    client = app.test_client()
    urls = [
        "/ops/jobs/",
        "/ops/jobs/jobs",
        f"/ops/jobs/jobs/{job.id}",
        "/ops/jobs/static/dashboard.css",
    ]
    for url in urls:
        assert client.get(url).status_code == 200, url
    page = client.get(f"/ops/jobs/jobs/{job.id}").get_data(as_text=True)
    reply = client.post(
        f"/ops/jobs/jobs/{job.id}/retry", data={"csrf_token": token_of(page), "confirm": "yes"}
    )
    assert reply.status_code == 303
    assert reply.headers["Location"] == f"/ops/jobs/jobs/{job.id}?msg=retried"
    assert engine.get(job.id).state is JobState.QUEUED  # type: ignore[union-attr]
    assert gate.calls == [f"GET {u}" for u in urls] + [
        f"GET /ops/jobs/jobs/{job.id}",
        f"POST /ops/jobs/jobs/{job.id}/retry",
    ]


def test_a_refusing_auth_callable_answers_403_and_changes_nothing(mounted: Any) -> None:
    app, gate, engine, job = mounted
    client = app.test_client()
    page = client.get(f"/ops/jobs/jobs/{job.id}").get_data(as_text=True)
    gate.allow = False
    assert client.get("/ops/jobs/").status_code == 403
    reply = client.post(
        f"/ops/jobs/jobs/{job.id}/retry", data={"csrf_token": token_of(page), "confirm": "yes"}
    )
    assert reply.status_code == 403
    assert engine.get(job.id).state is JobState.CANCELLED  # type: ignore[union-attr]


def test_a_post_without_the_csrf_token_is_refused(mounted: Any) -> None:
    app, _, engine, job = mounted
    client = app.test_client()
    client.get("/ops/jobs/")  # has the cookie, not the token
    reply = client.post(f"/ops/jobs/jobs/{job.id}/retry", data={"confirm": "yes"})
    assert reply.status_code == 403
    assert engine.get(job.id).state is JobState.CANCELLED  # type: ignore[union-attr]


def test_dashboard_without_auth_is_refused_at_setup() -> None:
    with pytest.raises(ValueError, match="dashboard_auth"):
        Backrun(dashboard="/ops/jobs")
    with pytest.raises(ValueError, match="below the site root"):
        Backrun(flask.Flask(__name__), dashboard="/", dashboard_auth=lambda: True)


@pytest.fixture
def shop() -> Iterator[Any]:
    sys.path.insert(0, str(EXAMPLE))
    try:
        import shop

        yield shop
    finally:
        sys.path.remove(str(EXAMPLE))


def test_the_example_mounts_the_dashboard_behind_its_login(shop: Any, tmp_path: Path) -> None:
    app = shop.create_app(
        {
            "TESTING": True,
            "BACKRUN_STORE": str(tmp_path / "store"),
            "OUTBOX": str(tmp_path / "outbox.txt"),
            "OPS_PASSWORD": "s3cret",
        }
    )
    client = app.test_client()
    anonymous = client.get("/ops/jobs/")
    assert anonymous.status_code == 401
    assert "Basic" in anonymous.headers["WWW-Authenticate"]
    wrong = base64.b64encode(b"ops:nope").decode()
    assert client.get("/ops/jobs/", headers={"Authorization": f"Basic {wrong}"}).status_code == 403
    right = base64.b64encode(b"ops:s3cret").decode()
    page = client.get("/ops/jobs/", headers={"Authorization": f"Basic {right}"})
    assert page.status_code == 200
    assert "Overview" in page.get_data(as_text=True)


def test_a_hook_that_reads_the_form_first_does_not_lose_the_token(mounted: Any) -> None:
    app, _, engine, job = mounted

    def read_form() -> None:
        flask.request.form.to_dict()  # consumes the body, as CSRF extensions do

    app.before_request(read_form)
    client = app.test_client()
    page = client.get(f"/ops/jobs/jobs/{job.id}").get_data(as_text=True)
    reply = client.post(
        f"/ops/jobs/jobs/{job.id}/retry", data={"csrf_token": token_of(page), "confirm": "yes"}
    )
    assert reply.status_code == 303
    assert engine.get(job.id).state is JobState.QUEUED  # type: ignore[union-attr]
