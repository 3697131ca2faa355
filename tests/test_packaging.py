"""The distribution is ready for an index: wheel and sdist build, and the wheel installs."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_wheel_and_sdist_build_and_the_wheel_installs_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = dist.glob("backrun-*.whl")
    (sdist,) = dist.glob("backrun-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert "backrun/py.typed" in names
    assert "backrun/__init__.py" in names
    # The Grafana dashboard, its provisioning and the alert rules ship as package data.
    for shipped in (
        "backrun/observability/grafana/dashboards/backrun.json",
        "backrun/observability/grafana/provisioning/dashboards/backrun.yaml",
        "backrun/observability/grafana/provisioning/datasources/prometheus.yaml",
        "backrun/observability/grafana/alerts.yaml",
    ):
        assert shipped in names, shipped
    assert not [n for n in names if n.startswith(("tests/", "examples/"))]
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    assert any(m.endswith("/pyproject.toml") for m in members)
    assert any(m.endswith("/backrun/engine.py") for m in members)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
    )
    version = subprocess.run(
        [str(python), "-c", "import backrun; print(backrun.__version__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.strip()
    assert version == "0.1.0"
    helped = subprocess.run(
        [str(venv / "bin" / "backrun"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert helped.returncode == 0, helped.stderr
    assert "worker" in helped.stdout
    module = subprocess.run(
        [str(python), "-m", "backrun", "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert module.returncode == 0, module.stderr
    exported = subprocess.run(
        [str(venv / "bin" / "backrun"), "grafana", "export", str(tmp_path / "grafana")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "grafana" / "dashboards" / "backrun.json").is_file()
