"""The dashboard's structure, and the alert rules under promtool."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .support import require_binary

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
DASHBOARD: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "backrun.json").read_text())
PANELS: list[dict[str, Any]] = DASHBOARD["panels"]


def test_schema_version_and_variables() -> None:
    assert DASHBOARD["schemaVersion"] >= 39
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("queue", "handler"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert variables[name]["includeAll"] is True
        assert variables[name]["allValue"] == ".*"


def test_the_panels_the_issue_asks_for() -> None:
    titles = {p["title"] for p in PANELS}
    assert titles == {
        "Throughput by outcome",
        "Failure ratio",
        "Job duration p50 / p95 / p99",
        "Queue wait p95",
        "Running jobs",
        "Queue depth by state",
        "Oldest ready job age (lag)",
        "Retries and dead jobs",
        "Orphans recovered",
        "Stuck threads",
        "Schedules: time since last tick",
    }
    assert len({p["id"] for p in PANELS}) == len(PANELS)


@pytest.mark.parametrize("panel", PANELS, ids=[p["title"] for p in PANELS])
def test_every_panel_is_described_has_a_unit_and_uses_the_variables(panel: dict[str, Any]) -> None:
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    assert len(panel["description"]) > 40
    assert panel["datasource"] == ds
    assert panel["fieldConfig"]["defaults"]["unit"]
    assert panel["targets"]
    for target in panel["targets"]:
        assert target["datasource"] == ds
        expr = target["expr"]
        if "backrun_schedule_" in expr:  # schedules have neither label
            continue
        assert 'queue=~"$queue"' in expr
        if "backrun_queue_" not in expr:  # the store's gauges have no handler label
            assert 'handler=~"$handler"' in expr
        windows = re.findall(r"\[([^\]]+)\]", expr)
        assert all(w == "$__rate_interval" for w in windows), expr
        assert "job=" not in expr


def test_the_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in PANELS:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert not cells & mine, panel["title"]
        cells |= mine


def test_provisioning_files_point_at_each_other() -> None:
    dashboards = (GRAFANA / "provisioning" / "dashboards" / "backrun.yaml").read_text()
    datasources = (GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    assert "type: file" in dashboards
    assert "path: /var/lib/grafana/dashboards/backrun" in dashboards
    assert "type: prometheus" in datasources
    assert "/var/lib/grafana/dashboards/backrun" in (GRAFANA / "README.md").read_text()


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args],
        cwd=GRAFANA,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.prometheus
def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", "alerts.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 5 rules found" in out.stdout


@pytest.mark.prometheus
def test_promtool_test_rules() -> None:
    out = promtool("test", "rules", "alerts.test.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
