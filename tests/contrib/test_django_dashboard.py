"""The dashboard mounted in the Django example: staff only, Django's CSRF, the admin link."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.cli.procs import REPO

django = pytest.importorskip("django")
pytest.importorskip("jinja2")

EXAMPLE = REPO / "examples" / "django_site"
SUPPORT = Path(__file__).parent / "django_support"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    var = tmp_path_factory.mktemp("mysite")
    saved = {k: os.environ.get(k) for k in ("MYSITE_VAR_DIR", "DJANGO_SETTINGS_MODULE")}
    os.environ["MYSITE_VAR_DIR"] = str(var)
    os.environ["DJANGO_SETTINGS_MODULE"] = "testsite_settings"
    sys.path[:0] = [str(EXAMPLE), str(SUPPORT)]
    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    User.objects.create_user("staff", password="pw-staff", is_staff=True)
    User.objects.create_user("plain", password="pw-plain")
    try:
        yield SimpleNamespace(var=var)
    finally:
        from backrun.contrib.django import reset_engine

        reset_engine()
        for path in (str(EXAMPLE), str(SUPPORT)):
            sys.path.remove(path)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client(user: str | None = None) -> Any:
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    if user is not None:
        assert browser.login(username=user, password=f"pw-{user}")
    return browser


def cancelled_job() -> Any:
    from backrun.contrib.django import get_engine

    engine = get_engine()
    job = engine.enqueue("accounts.send_welcome", {"account_id": 1})
    return engine.cancel(job.id)


def state_of(job_id: str) -> str:
    from backrun.contrib.django import get_engine

    job = get_engine().get(job_id)
    assert job is not None
    return job.state.value


def test_anonymous_and_non_staff_users_are_refused(site: SimpleNamespace) -> None:
    job = cancelled_job()
    for browser in (client(), client("plain")):
        for url in ("/ops/jobs/", f"/ops/jobs/jobs/{job.id}", "/ops/jobs/queues"):
            reply = browser.get(url)
            assert reply.status_code == 302
            assert reply["Location"].startswith("/admin/login/")
        posted = browser.post(f"/ops/jobs/jobs/{job.id}/retry", {"confirm": "yes"})
        assert posted.status_code in (302, 403)
    assert state_of(job.id) == "cancelled"


def test_staff_see_every_page(site: SimpleNamespace) -> None:
    job = cancelled_job()
    browser = client("staff")
    for url in ("/ops/jobs/", "/ops/jobs/jobs", f"/ops/jobs/jobs/{job.id}", "/ops/jobs/workers"):
        reply = browser.get(url)
        assert reply.status_code == 200, url
        assert b'href="/ops/jobs/static/dashboard.css"' in reply.content
    assert browser.get("/ops/jobs/static/dashboard.css").status_code == 200


def test_a_post_without_django_s_csrf_token_is_refused(site: SimpleNamespace) -> None:
    job = cancelled_job()
    browser = client("staff")
    reply = browser.post(f"/ops/jobs/jobs/{job.id}/retry", {"confirm": "yes"})
    assert reply.status_code == 403
    assert state_of(job.id) == "cancelled"


def test_staff_retry_with_django_s_csrf_token(site: SimpleNamespace) -> None:
    job = cancelled_job()
    browser = client("staff")
    page = browser.get(f"/ops/jobs/jobs/{job.id}").content.decode()
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match is not None
    reply = browser.post(
        f"/ops/jobs/jobs/{job.id}/retry",
        {"csrfmiddlewaretoken": match.group(1), "confirm": "yes"},
    )
    assert reply.status_code == 303
    assert reply["Location"] == f"/ops/jobs/jobs/{job.id}?msg=retried"
    assert state_of(job.id) == "queued"


def test_the_admin_index_links_to_the_dashboard(site: SimpleNamespace) -> None:
    page = client("staff").get("/admin/").content.decode()
    assert '<a href="/ops/jobs/">Jobs dashboard</a>' in page
