"""The dashboard's security promises through WSGI: escaping, CSRF, GET-safety, read-only."""

from __future__ import annotations

import re
from typing import Any

import pytest

import backrun
from backrun.jobs import Job, JobError, JobState, new_job_id
from backrun.web import Dashboard
from tests.web.client import Client, csrf_token
from tests.web.support import T0, Fixture, make_engine

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'


@pytest.fixture
def fx() -> Fixture:
    return make_engine()


def snapshot(engine: backrun.Engine) -> Any:
    jobs = engine.storage.find_page(limit=1000)
    return (
        engine.counts(),
        engine.paused(),
        sorted((j.id, j.state, j.attempts, j.cancel_requested) for j in jobs),
    )


def action_urls(fx: Fixture) -> list[tuple[str, dict[str, str]]]:
    return [
        (f"/jobs/{fx.dead.id}/retry", {}),
        (f"/jobs/{fx.queued.id}/cancel", {}),
        ("/queues/default/pause", {}),
        ("/queues/bulk/resume", {}),
        ("/queues/default/retry-dead", {}),
        ("/purge", {"state": "finished", "older_than": "0"}),
    ]


# -- escaping ------------------------------------------------------------------------


def hostile_job(engine: backrun.Engine, state: JobState) -> Job:
    error = JobError(SCRIPT, IMG, f"Traceback:\n  {SCRIPT}\n{IMG}", 1, T0)
    job = Job(
        id=new_job_id(),
        handler=f"h{SCRIPT}{IMG}",
        payload={"note": SCRIPT, IMG: IMG},
        queue="default",
        state=JobState.QUEUED,
        run_at=T0,
        created_at=T0,
        headers={"x-note": IMG, SCRIPT: "v"},
    )
    engine.storage.add(job)
    if state is JobState.RUNNING:
        (job,) = engine.storage.claim(
            queues=["default"], limit=1, now=T0, worker_id="w-1", lease=engine.lease
        )
        engine.storage.update(job.replace(errors=(error,)))
    return job


def assert_escaped(html: str) -> None:
    assert "<script>alert" not in html
    assert "<img src=x" not in html
    assert "onerror=alert(1)>" not in html
    # Every script on the page is the dashboard's own file.
    assert re.findall(r"<script[^>]*>", html) == [
        re.search(r'<script src="[^"]*/static/dashboard.js" defer>', html).group(0)  # type: ignore[union-attr]
    ]


def test_hostile_payloads_errors_and_names_render_as_text(fx: Fixture) -> None:
    running = hostile_job(fx.engine, JobState.RUNNING)
    queued = hostile_job(fx.engine, JobState.QUEUED)
    client = Client(Dashboard(fx.engine))
    pages = ["/", "/jobs", f"/jobs/{running.id}", f"/jobs/{queued.id}", "/queues", "/workers"]
    pages += [f"/jobs?handler=h{SCRIPT}{IMG}", f"/jobs?queue={IMG}", f"/jobs/{IMG}"]
    for url in pages:
        html = client.get(url).text
        assert_escaped(html)
    job_html = client.get(f"/jobs/{running.id}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in job_html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in job_html
    listing = client.get(f"/jobs?handler=h{SCRIPT}{IMG}").text
    assert queued.id in listing  # the filter matched, and the name was shown escaped


def test_responses_carry_a_strict_content_security_policy(fx: Fixture) -> None:
    reply = Client(Dashboard(fx.engine)).get("/")
    policy = reply.header("Content-Security-Policy") or ""
    assert "script-src 'self'" in policy
    assert "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    assert reply.header("X-Frame-Options") == "DENY"


# -- CSRF ----------------------------------------------------------------------------


def test_a_post_without_a_valid_token_changes_nothing(fx: Fixture) -> None:
    client = Client(Dashboard(fx.engine))
    token = csrf_token(client.get("/queues").text)
    before = snapshot(fx.engine)
    for url, fields in action_urls(fx):
        attempts: list[tuple[Client, dict[str, str], dict[str, str]]] = [
            (client, {"confirm": "yes", **fields}, {}),  # no token
            (client, {"confirm": "yes", "csrf_token": "0" * 64, **fields}, {}),  # wrong token
            (
                Client(client.app),
                {"confirm": "yes", "csrf_token": token, **fields},
                {},
            ),  # no cookie
            (  # the right token, from another site
                client,
                {"confirm": "yes", "csrf_token": token, **fields},
                {"Origin": "https://evil.example"},
            ),
            (
                client,
                {"confirm": "yes", "csrf_token": token, **fields},
                {"Sec-Fetch-Site": "cross-site"},
            ),
        ]
        for browser, form, headers in attempts:
            reply = browser.post(url, form, headers=headers)
            assert reply.status == 403, (url, form, headers)
            assert snapshot(fx.engine) == before
    # The same requests with the token pass, so the refusals above were the token's doing.
    retry = client.post(
        f"/jobs/{fx.dead.id}/retry",
        {"confirm": "yes", "csrf_token": token},
        headers={"Origin": "http://127.0.0.1"},
    )
    assert retry.status == 303
    assert fx.engine.get(fx.dead.id).state is JobState.QUEUED  # type: ignore[union-attr]


def test_the_token_is_bound_to_the_browser_s_cookie(fx: Fixture) -> None:
    app = Dashboard(fx.engine)
    alice, mallory = Client(app), Client(app)
    alice_token = csrf_token(alice.get("/queues").text)
    mallory.get("/queues")
    assert alice.cookies["backrun_csrf"] != mallory.cookies["backrun_csrf"]
    reply = mallory.post(f"/jobs/{fx.dead.id}/retry", {"confirm": "yes", "csrf_token": alice_token})
    assert reply.status == 403
    assert fx.engine.get(fx.dead.id).state is JobState.DEAD  # type: ignore[union-attr]


def test_the_csrf_cookie_is_http_only_and_same_site_strict(fx: Fixture) -> None:
    reply = Client(Dashboard(fx.engine), script_name="/ops").get("/")
    cookie = reply.header("Set-Cookie") or ""
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/ops" in cookie


# -- GET is safe ----------------------------------------------------------------------


def test_get_never_changes_anything(fx: Fixture) -> None:
    client = Client(Dashboard(fx.engine))
    token = csrf_token(client.get("/queues").text)
    before = snapshot(fx.engine)
    for url, fields in action_urls(fx):
        query = "&".join(
            f"{k}={v}" for k, v in {"confirm": "yes", "csrf_token": token, **fields}.items()
        )
        reply = client.get(f"{url}?{query}")
        assert reply.status == 200
        assert "Please confirm" in reply.text
        assert snapshot(fx.engine) == before


# -- read-only -------------------------------------------------------------------------


def test_read_only_shows_no_actions_and_refuses_every_post(fx: Fixture) -> None:
    client = Client(Dashboard(fx.engine, read_only=True))
    for url in (
        "/",
        "/jobs",
        f"/jobs/{fx.dead.id}",
        f"/jobs/{fx.queued.id}",
        "/queues",
        "/workers",
    ):
        html = client.get(url).text
        assert 'method="post"' not in html, url
        assert "read-only" in html
    writable = Client(Dashboard(fx.engine, secret=b"k" * 32))
    token = csrf_token(writable.get("/queues").text)
    client.cookies.update(writable.cookies)
    same_secret = Client(
        Dashboard(fx.engine, read_only=True, secret=b"k" * 32), cookies=client.cookies
    )
    before = snapshot(fx.engine)
    for url, fields in action_urls(fx):
        for browser in (client, same_secret):
            reply = browser.post(url, {"confirm": "yes", "csrf_token": token, **fields})
            assert reply.status == 403
            assert "read-only" in reply.text
        assert client.get(url).status == 403
    assert snapshot(fx.engine) == before
