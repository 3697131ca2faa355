"""Grafana files ship in the package; ``backrun grafana export`` writes them (issue 11.11)."""

from __future__ import annotations

import json
from pathlib import Path

from backrun.cli._grafana import grafana_files
from tests.cli.procs import REPO
from tests.cli.procs import backrun as run_backrun

TOP = REPO / "grafana"
EXPECTED = {
    "alerts.test.yaml",
    "alerts.yaml",
    "dashboards/backrun.json",
    "provisioning/dashboards/backrun.yaml",
    "provisioning/datasources/prometheus.yaml",
}


def test_packaged_files_are_the_repository_grafana_files() -> None:
    shipped = grafana_files()
    assert set(shipped) == EXPECTED
    for name, node in shipped.items():
        assert node.read_bytes() == (TOP / name).read_bytes(), (
            f"grafana/{name} and backrun/observability/grafana/{name} differ: "
            "edit grafana/ and copy it over (one source of truth)"
        )


def test_export_writes_dashboard_provisioning_and_alerts(tmp_path: Path) -> None:
    target = tmp_path / "out"
    result = run_backrun("grafana", "export", str(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
    assert written == EXPECTED
    dashboard = json.loads((target / "dashboards" / "backrun.json").read_text())
    assert dashboard["title"]
    assert "wrote 5 of 5 file(s)" in result.stdout

    again = run_backrun("grafana", "export", str(target), "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["written"] == []  # identical files are left alone

    (target / "alerts.yaml").write_text("# my thresholds\n")
    refused = run_backrun("grafana", "export", str(target), cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"error: 1 file(s) in {str(target)!r} differ from backrun's (alerts.yaml); "
        "pass --force to overwrite"
    ]
    assert (target / "alerts.yaml").read_text() == "# my thresholds\n"
    forced = run_backrun("grafana", "export", str(target), "--force", cwd=tmp_path)
    assert forced.returncode == 0
    assert (target / "alerts.yaml").read_bytes() == (TOP / "alerts.yaml").read_bytes()


def test_export_into_a_file_is_a_usage_error(tmp_path: Path) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("x")
    result = run_backrun("grafana", "export", str(a_file), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
