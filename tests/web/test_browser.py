"""The dashboard in a real Chromium, driven by Selenium.

A real server thread serves the dashboard on 127.0.0.1 over a JSON store that
a real worker process works on. Needs the Debian packages ``chromium`` and
``chromium-driver``: skipped without them, failed without them under CI=true.
Screenshots of each page are saved under the test's temporary directory (and
copied to ``$BACKRUN_SCREENSHOTS`` when set).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import backrun
from backrun.jobs import Job, JobState
from tests.cli.procs import REPO, Proc
from tests.helpers import wait_until

pytest.importorskip("jinja2")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _require_browser() -> None:
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (the dev dependency group)")
    if CHROMIUM is None:
        missing.append("chromium")
    if DRIVER is None:
        missing.append("chromedriver")
    if missing:
        reason = (
            "real-browser tests need "
            + ", ".join(missing)
            + (" (apt-get install -y chromium chromium-driver)")
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A JSON store, a worker process on it, and the dashboard served over it."""
    _require_browser()
    from backrun.web import Dashboard, serve

    tmp = tmp_path_factory.mktemp("browser")
    store = tmp / "store"
    engine = backrun.Engine(
        backrun.JsonFileStorage(store, fsync=False), middleware=[], recovery_interval=0.5
    )
    for name in ("quick", "gated", "boom", "flaky"):
        engine.handler(name=name)(lambda payload: None)  # names only: the worker runs them
    worker = Proc(
        [sys.executable, "-m", "backrun", "worker", "tests.fixtures.opsapp:engine"],
        cwd=REPO,
        env={"OPS_STORE": str(store)},
    )
    server = serve(Dashboard(engine), host="127.0.0.1", port=0)
    shots = tmp / "screenshots"
    shots.mkdir()
    try:
        worker.wait_for("started", timeout=30)
        wait_until(lambda: len(engine.workers()) == 1, what="the worker's record")
        yield SimpleNamespace(engine=engine, url=server.url.rstrip("/"), tmp=tmp, shots=shots)
    finally:
        server.close()
        worker.signal(signal.SIGTERM)
        worker.wait(30)
        engine.close()


@pytest.fixture(scope="module")
def browser(site: SimpleNamespace) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1360,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER or ""), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def state(site: SimpleNamespace, job: Job) -> JobState:
    found = site.engine.get(job.id)
    assert found is not None
    return found.state


def settle(site: SimpleNamespace, job: Job, wanted: JobState, timeout: float = 60) -> None:
    wait_until(lambda: state(site, job) is wanted, timeout=timeout, what=f"{job.id} {wanted}")


def open_page(browser: Any, site: SimpleNamespace, path: str) -> None:
    browser.get(site.url + path)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors  # no CSP violation, no missing asset, no script error


def screenshot(browser: Any, site: SimpleNamespace, name: str) -> Path:
    """Save a screenshot of the whole page (its content's height, at 1360 px wide)."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    metrics = {"width": 1360, "height": max(int(height), 480), "deviceScaleFactor": 1}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "mobile": False})
    path = site.shots / f"dashboard-{name}.png"
    try:
        browser.save_screenshot(str(path))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    target = os.environ.get("BACKRUN_SCREENSHOTS")
    if target:
        shutil.copy(path, Path(target) / path.name)
    return path


def click_and_confirm(browser: Any, button: Any) -> str:
    """Click an action button, accept the browser's confirmation; return the question."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    button.click()
    alert = WebDriverWait(browser, 5).until(expected_conditions.alert_is_present())
    question: str = alert.text
    alert.accept()
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    return question


def button(browser: Any, label: str, within: str = "main") -> Any:
    from selenium.webdriver.common.by import By

    for candidate in browser.find_elements(By.CSS_SELECTOR, f"{within} button"):
        if candidate.text.strip() == label:
            return candidate
    raise AssertionError(f"no {label!r} button on {browser.current_url}")


def text_of(browser: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.CSS_SELECTOR, selector).text)


# -- the tests -------------------------------------------------------------------------


def test_every_page_loads_and_looks_right(browser: Any, site: SimpleNamespace) -> None:
    engine = site.engine
    done = [
        engine.enqueue("quick", {"text": str(i)}, queue=q)
        for i, q in enumerate(["default", "mail", "reports"] * 4)
    ]
    dead = [
        engine.enqueue("boom", {"text": f"SMTP timeout after {n}s"}, queue="mail") for n in (30, 60)
    ]
    gate = site.tmp / "never"
    running = engine.enqueue("gated", {"path": str(gate)}, queue="reports")
    engine.enqueue("quick", {"text": "later"}, delay=timedelta(hours=1))
    for job in done:
        settle(site, job, JobState.SUCCEEDED)
    for job in dead:
        settle(site, job, JobState.DEAD)
    settle(site, running, JobState.RUNNING)

    open_page(browser, site, "/")
    assert text_of(browser, "h1") == "Overview"
    assert "Running now" in browser.page_source
    assert running.id[:12] in text_of(browser, "main")
    screenshot(browser, site, "overview")

    open_page(browser, site, "/jobs")
    assert text_of(browser, "h1") == "Jobs"
    assert "dead" in text_of(browser, "table.jobs")
    screenshot(browser, site, "jobs")

    open_page(browser, site, f"/jobs/{dead[0].id}")
    assert "SMTP timeout after 30s" in text_of(browser, "pre.code")
    assert "RuntimeError" in text_of(browser, "details.attempt")
    hover = browser.find_element("css selector", "dl.facts time").get_attribute("title")
    assert hover.endswith(" UTC")
    screenshot(browser, site, "job")

    open_page(browser, site, "/workers")
    (info,) = engine.workers()
    assert info.id in text_of(browser, "main")
    assert running.id[:12] in text_of(browser, "main")
    screenshot(browser, site, "workers")

    open_page(browser, site, "/queues")
    assert {"default", "mail", "reports"} <= set(text_of(browser, "table").split())
    screenshot(browser, site, "queues")
    gate.touch()
    settle(site, running, JobState.SUCCEEDED)


def test_retry_a_dead_job_and_see_it_run(browser: Any, site: SimpleNamespace) -> None:
    gate = site.tmp / "flaky-gate"
    job = site.engine.enqueue("flaky", {"path": str(gate)})
    settle(site, job, JobState.DEAD)
    open_page(browser, site, f"/jobs/{job.id}")
    assert text_of(browser, ".title-row .pill") == "dead"
    gate.touch()
    question = click_and_confirm(browser, button(browser, "Retry"))
    assert question == "Run this job again now?"
    assert "queued to run again" in text_of(browser, ".flash")
    settle(site, job, JobState.SUCCEEDED)
    open_page(browser, site, f"/jobs/{job.id}")
    assert text_of(browser, ".title-row .pill") == "succeeded"


def test_cancel_a_running_job(browser: Any, site: SimpleNamespace) -> None:
    job = site.engine.enqueue("gated", {"path": str(site.tmp / "never-cancel")})
    settle(site, job, JobState.RUNNING)
    open_page(browser, site, f"/jobs/{job.id}")
    assert text_of(browser, ".title-row .pill") == "running"
    click_and_confirm(browser, button(browser, "Cancel"))
    assert "Cancellation requested" in text_of(browser, ".flash")
    settle(site, job, JobState.CANCELLED)
    open_page(browser, site, f"/jobs/{job.id}")
    assert text_of(browser, ".title-row .pill") == "cancelled"


def test_pause_a_queue_and_the_worker_stops_taking_its_jobs(
    browser: Any, site: SimpleNamespace
) -> None:
    engine = site.engine
    settle(site, engine.enqueue("quick", {"text": "seed"}, queue="pausable"), JobState.SUCCEEDED)
    open_page(browser, site, "/queues")
    click_and_confirm(browser, button(browser, "Pause", "#queue-pausable"))
    assert "paused" in text_of(browser, "#queue-pausable")
    assert engine.paused() == frozenset({"pausable"})
    held = engine.enqueue("quick", {"text": "held"}, queue="pausable", priority=100)
    other = engine.enqueue("quick", {"text": "other"})
    settle(site, other, JobState.SUCCEEDED)
    assert state(site, held) is JobState.QUEUED
    open_page(browser, site, "/queues")
    click_and_confirm(browser, button(browser, "Resume", "#queue-pausable"))
    assert "active" in text_of(browser, "#queue-pausable")
    settle(site, held, JobState.SUCCEEDED)


XSS_TEXT = '<script>window.__xss = 1</script>"><img src=x onerror="window.__xss = 2">'


def test_hostile_payloads_and_errors_stay_text_in_the_browser(
    browser: Any, site: SimpleNamespace
) -> None:
    job = site.engine.enqueue("boom", {"text": XSS_TEXT})
    settle(site, job, JobState.DEAD)
    for path in (f"/jobs/{job.id}", "/jobs?state=dead", "/"):
        open_page(browser, site, path)
        assert browser.execute_script("return window.__xss") is None
        assert not browser.find_elements("css selector", "main img")
    open_page(browser, site, f"/jobs/{job.id}")
    shown = text_of(browser, "pre.code")  # the payload, as JSON text
    assert "<script>window.__xss = 1</script>" in shown
    assert '<img src=x onerror=\\"window.__xss = 2\\">' in shown
    assert "onerror" in text_of(browser, "details.attempt summary")


class _Attacker(BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_csrf_from_another_site_and_a_forged_token_change_nothing(
    browser: Any, site: SimpleNamespace
) -> None:
    job = site.engine.enqueue("boom", {"text": "stay dead"})
    settle(site, job, JobState.DEAD)
    open_page(browser, site, f"/jobs/{job.id}")  # the browser holds the dashboard's cookie
    _Attacker.page = (
        f'<form id="f" method="post" action="{site.url}/jobs/{job.id}/retry">'
        '<input name="confirm" value="yes"><input name="csrf_token" value="guess"></form>'
        "<script>document.getElementById('f').submit()</script>"
    ).encode()
    attacker = ThreadingHTTPServer(("localhost", 0), _Attacker)
    thread = threading.Thread(target=attacker.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://localhost:{attacker.server_address[1]}/")
        wait_until(lambda: browser.current_url.startswith(site.url), what="the forged POST")
        assert "security token" in text_of(browser, "main")
    finally:
        attacker.shutdown()
        attacker.server_close()
    browser.get_log("browser")  # the 403 is logged; it is the point of this test
    assert state(site, job) is JobState.DEAD

    open_page(browser, site, f"/jobs/{job.id}")
    browser.execute_script(
        "document.querySelectorAll('input[name=csrf_token]')"
        ".forEach(i => i.value = 'f' + i.value.slice(1))"
    )
    click_and_confirm(browser, button(browser, "Retry"))
    assert "security token" in text_of(browser, "main")
    browser.get_log("browser")
    assert state(site, job) is JobState.DEAD
