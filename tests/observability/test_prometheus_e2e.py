"""A real Prometheus scraping a real worker: every dashboard query must return data.

Starts ``prometheus`` (Debian's package) on 127.0.0.1 with a temporary TSDB and
a 1 s scrape interval, pointed at ``worker_app prometheus`` (a worker process
running successes, retries, dead jobs, a stuck handler, orphan rescues and a
backlog), with the alert rules loaded.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until

from .support import free_port, read_json_line, require_binary

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
RATE_INTERVAL = "15s"


@dataclass
class Stack:
    prometheus: str  # base URL of the Prometheus HTTP API
    metrics: str  # the worker's /metrics URL
    started: float  # when Prometheus started (Unix time)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def api(stack: Stack, path: str, **params: str | float) -> Any:
    query = urllib.parse.urlencode(params)
    body = get_json(f"{stack.prometheus}/api/v1/{path}?{query}")
    assert body["status"] == "success", body
    return body["data"]


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.observability.worker_app", "prometheus"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(tmp / "worker.log").open("w"),
        text=True,
    )
    server: subprocess.Popen[bytes] | None = None
    try:
        metrics_port = read_json_line(worker)["metrics_port"]
        web_port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(GRAFANA / "alerts.yaml")],
            "scrape_configs": [
                {
                    "job_name": "backrun",
                    "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is valid YAML
        started = time.time()
        server = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "prometheus.log").open("w"),
        )
        base = f"http://127.0.0.1:{web_port}"
        wait_until(lambda: reachable(f"{base}/-/ready"), timeout=30, what="Prometheus ready")
        yield Stack(base, f"http://127.0.0.1:{metrics_port}/metrics", started)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        finally:
            if worker.poll() is None:
                worker.kill()
            if server is not None:
                server.terminate()
                server.wait(15)
    assert worker.returncode == 0, (tmp / "worker.log").read_text()[-3000:]


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target, with the Grafana variables substituted."""
    dashboard = json.loads((GRAFANA / "dashboards" / "backrun.json").read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$queue", ".*")
                .replace("$handler", ".*")
            )
            assert "$" not in expr, expr
            queries.append((panel["title"], expr))
    return queries


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with at least one finite value."""
    return any(math.isfinite(float(value)) for series in result for _, value in series["values"])


def test_the_worker_is_scraped(stack: Stack) -> None:
    def up() -> bool:
        targets = api(stack, "targets")["activeTargets"]
        return any(t["health"] == "up" for t in targets)

    wait_until(up, timeout=20, what="the scrape target to be up")


def test_every_dashboard_panel_query_returns_data(stack: Stack) -> None:
    pending = dict.fromkeys(panel_queries(), "")
    assert len(pending) >= 13

    def all_answered() -> bool:
        for key in list(pending):
            result = api(
                stack,
                "query_range",
                query=key[1],
                start=stack.started,
                end=time.time(),
                step=1,
            )["result"]
            if has_data(result):
                del pending[key]
        return not pending

    try:
        wait_until(all_answered, timeout=45, what="every panel query to return data")
    except AssertionError:
        pytest.fail("no data for: " + "; ".join(f"{t}: {q}" for t, q in pending))


@pytest.mark.parametrize(
    ("label", "expected"),
    [("queue", {"default", "backlog"}), ("handler", {"ok", "flaky", "doomed", "stuck"})],
)
def test_dashboard_variables_list_the_queues_and_handlers(
    stack: Stack, label: str, expected: set[str]
) -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / "backrun.json").read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == label]
    match = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["definition"])
    assert match is not None
    selector = match.group(1).replace("$queue", ".*")
    assert match.group(2) == label

    def listed() -> bool:
        values = api(stack, f"label/{label}/values", **{"match[]": selector})
        return expected <= set(values)

    wait_until(listed, timeout=20, what=f"{label} values {expected}")


def test_the_alert_rules_load_and_evaluate(stack: Stack) -> None:
    def healthy() -> bool:
        groups = api(stack, "rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        names = {r["name"] for r in rules}
        assert names == {
            "BackrunHighFailureRatio",
            "BackrunQueueLagGrowing",
            "BackrunStuckThreads",
            "BackrunDeadJobs",
            "BackrunScheduleMissedTick",
        }
        return all(r["health"] == "ok" and r.get("lastEvaluation") for r in rules)

    wait_until(healthy, timeout=20, what="every alert rule evaluated")


def test_dead_jobs_and_stuck_threads_alerts_go_pending(stack: Stack) -> None:
    def pending_or_firing() -> bool:
        alerts = api(stack, "alerts")["alerts"]
        return {"BackrunDeadJobs", "BackrunStuckThreads"} <= {
            a["labels"]["alertname"] for a in alerts
        }

    wait_until(pending_or_firing, timeout=20, what="dead-job and stuck-thread alerts")


def test_a_scrape_passes_promtool_check_metrics(stack: Stack) -> None:
    promtool = require_binary("promtool")
    with urllib.request.urlopen(stack.metrics, timeout=10) as response:
        scrape = response.read()
    assert b"backrun_queue_jobs{" in scrape
    out = subprocess.run(
        [promtool, "check", "metrics"],
        input=scrape,
        capture_output=True,
        timeout=30,
        check=False,
        env={**os.environ, "LANG": "C"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == b"", out.stdout  # no lint warnings either
