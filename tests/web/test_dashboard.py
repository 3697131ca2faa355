"""The dashboard's pages and actions through WSGI: what each shows, what each action does."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

import backrun
from backrun.jobs import JobState
from backrun.web import Dashboard
from tests.web.client import Client, csrf_token
from tests.web.support import Fixture, make_engine


@pytest.fixture
def fx() -> Fixture:
    return make_engine()


def client_for(fx: Fixture, **options: object) -> Client:
    return Client(Dashboard(fx.engine, **options), script_name="/ops/jobs")  # type: ignore[arg-type]


def act(client: Client, url: str, **fields: str) -> tuple[int, str | None]:
    """POST a confirmed action with this browser's token; return the status and Location."""
    token = csrf_token(client.get("/queues").text)
    reply = client.post(url, {"csrf_token": token, "confirm": "yes", **fields})
    return reply.status, reply.header("Location")


def test_overview_shows_counts_lag_chart_and_paused_queue(fx: Fixture) -> None:
    fx.clock.advance(timedelta(minutes=1))
    page = client_for(fx).get("/")
    assert page.status == 200
    html = page.text
    assert re.search(r'<span class="label">dead</span>\s*<span class="value">1</span>', html)
    assert re.search(r'<span class="label">succeeded</span>\s*<span class="value">1</span>', html)
    assert "1 succeeded, " in html
    assert "1 dead, " in html
    assert '<span class="pill paused">paused</span>' in html
    # The bulk queue's job waits since it was enqueued one minute ago.
    assert re.search(
        r'waiting <time datetime="[^"]+" title="2030-01-01 12:05:00.000 UTC">1 min', html
    )


def test_times_are_relative_with_the_exact_time_on_hover(fx: Fixture) -> None:
    fx.clock.advance(timedelta(minutes=3))
    html = client_for(fx).get(f"/jobs/{fx.succeeded.id}").text
    assert '<time datetime="2030-01-01T12:03:00+00:00" title="2030-01-01 12:03:00.000 UTC">' in html
    assert "5 min ago</time>" in html


def test_jobs_are_newest_first_paginated_and_filtered(fx: Fixture) -> None:
    extra = [fx.engine.enqueue("mail.send", {"to": str(i)}, queue="bulk") for i in range(5)]
    client = Client(Dashboard(fx.engine, page_size=3))
    first = client.get("/jobs?queue=bulk").text
    ids = re.findall(r'href="/jobs/([0-9a-f]{32})"', first)
    assert ids == [j.id for j in reversed(extra)][:3]
    assert "page 1 · 6 jobs" in first
    assert 'href="/jobs?page=2&amp;queue=bulk"' in first or "page=2" in first
    third = client.get("/jobs?queue=bulk&page=2").text
    assert re.findall(r'href="/jobs/([0-9a-f]{32})"', third) == [
        extra[1].id,
        extra[0].id,
        fx.queued.id,
    ]
    assert "Older" not in third
    dead = client.get("/jobs?state=dead").text
    assert re.findall(r'href="/jobs/([0-9a-f]{32})"', dead) == [fx.dead.id]
    by_handler = client.get("/jobs?handler=nope").text
    assert "No jobs match." in by_handler
    assert client.get("/jobs?state=bogus").status == 400


def test_the_id_search_goes_to_the_job(fx: Fixture) -> None:
    reply = client_for(fx).get(f"/jobs?id={fx.dead.id.upper()}")
    assert reply.status == 303
    assert reply.header("Location") == f"/ops/jobs/jobs/{fx.dead.id}"
    assert client_for(fx).get("/jobs/" + "0" * 32).status == 404
    assert client_for(fx).get("/jobs/not-an-id").status == 404


def test_job_page_shows_payload_headers_trace_and_every_attempt(fx: Fixture) -> None:
    html = client_for(fx).get(f"/jobs/{fx.dead.id}").text
    assert "&#34;to&#34;: &#34;a@example.com&#34;" in html  # pretty JSON, escaped
    assert "0af7651916cd43dd8448eb211c80319c" in html  # the trace id from traceparent
    assert "<strong>RuntimeError</strong>: smtp down" in html
    assert "Traceback (most recent call last)" in html
    assert 'action="/ops/jobs/jobs/' + fx.dead.id + '/retry"' in html
    assert "/cancel" not in html  # a dead job cannot be cancelled


def test_workers_page_lists_a_live_worker(fx: Fixture) -> None:
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[])
    with engine.running() as worker:
        backrun.testing.wait_until(lambda: engine.workers(), timeout=5)
        html = Client(Dashboard(engine)).get("/workers").text
        assert worker.id in html
        assert "0/4" in html
    assert "No live workers" in Client(Dashboard(engine)).get("/workers").text


def test_static_assets_ship_in_the_package(fx: Fixture) -> None:
    client = client_for(fx)
    css = client.get("/static/dashboard.css")
    assert css.status == 200
    assert css.header("Content-Type") == "text/css; charset=utf-8"
    assert client.get("/static/dashboard.js").status == 200
    for hostile in ("/static/../_app.py", "/static/_app.py", "/static/%2e%2e/x"):
        assert client.get(hostile).status == 404


def test_retry_a_dead_job(fx: Fixture) -> None:
    client = client_for(fx)
    status, location = act(client, f"/jobs/{fx.dead.id}/retry")
    assert (status, location) == (303, f"/ops/jobs/jobs/{fx.dead.id}?msg=retried")
    assert fx.engine.get(fx.dead.id).state is JobState.QUEUED  # type: ignore[union-attr]
    assert "queued to run again" in client.get(f"/jobs/{fx.dead.id}?msg=retried").text


def test_retrying_a_succeeded_job_is_a_conflict(fx: Fixture) -> None:
    status, _ = act(client_for(fx), f"/jobs/{fx.succeeded.id}/retry")
    assert status == 409
    assert fx.engine.get(fx.succeeded.id).state is JobState.SUCCEEDED  # type: ignore[union-attr]


def test_cancel_a_waiting_job(fx: Fixture) -> None:
    status, _ = act(client_for(fx), f"/jobs/{fx.queued.id}/cancel")
    assert status == 303
    assert fx.engine.get(fx.queued.id).state is JobState.CANCELLED  # type: ignore[union-attr]


def test_pause_and_resume_a_queue(fx: Fixture) -> None:
    client = client_for(fx)
    assert act(client, "/queues/reports/pause") == (303, "/ops/jobs/queues?msg=paused")
    assert fx.engine.paused() == frozenset({"bulk", "reports"})
    assert act(client, "/queues/bulk/resume")[0] == 303
    assert fx.engine.paused() == frozenset({"reports"})
    assert act(client, "/queues/no%20such/pause")[0] == 404


def test_retry_all_dead_of_a_queue(fx: Fixture) -> None:
    more = fx.engine.enqueue("mail.send", {"fail": "again"})
    fx.engine.run_until_idle(timeout=10)
    status, location = act(client_for(fx), "/queues/default/retry-dead")
    assert status == 303
    assert location == "/ops/jobs/queues?msg=retried-dead&n=2"
    for job_id in (fx.dead.id, more.id):
        assert fx.engine.get(job_id).state is JobState.QUEUED  # type: ignore[union-attr]


def test_purge_finished_jobs(fx: Fixture) -> None:
    client = client_for(fx)
    status, _ = act(client, "/purge", state="succeeded", older_than="0")
    assert status == 303
    assert fx.engine.get(fx.succeeded.id) is None
    assert fx.engine.get(fx.dead.id) is not None
    assert act(client, "/purge", state="running", older_than="0")[0] == 400


def test_an_unconfirmed_post_asks_first_and_changes_nothing(fx: Fixture) -> None:
    client = client_for(fx)
    token = csrf_token(client.get("/queues").text)
    reply = client.post(f"/jobs/{fx.dead.id}/retry", {"csrf_token": token})
    assert reply.status == 200
    assert "Please confirm" in reply.text
    assert 'name="confirm" value="yes"' in reply.text
    assert fx.engine.get(fx.dead.id).state is JobState.DEAD  # type: ignore[union-attr]


def test_schedules_show_when_the_engine_has_them(fx: Fixture) -> None:
    from types import SimpleNamespace

    from tests.web.support import T0

    assert Client(Dashboard(fx.engine)).get("/schedules").status == 404
    assert 'href="/schedules"' not in Client(Dashboard(fx.engine)).get("/").text
    tick = SimpleNamespace(
        name="<b>nightly</b>",
        handler="mail.send",
        spec="30 2 * * *",
        tz="Europe/Paris",
        queue="default",
        next_run_at=T0,
        last_tick_at=None,
    )
    fx.engine.schedule_list = lambda: [tick]  # type: ignore[method-assign]
    fx.engine.schedules = lambda: [tick]  # type: ignore[method-assign]
    client = Client(Dashboard(fx.engine))
    assert 'href="/schedules"' in client.get("/").text
    page = client.get("/schedules")
    assert page.status == 200
    assert "&lt;b&gt;nightly&lt;/b&gt;" in page.text
    assert "30 2 * * *" in page.text
