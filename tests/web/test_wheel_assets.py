"""Every dashboard asset ships in the wheel, so the dashboard works offline once installed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_templates_and_static_files_are_in_the_wheel(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--no-isolation",
            "--wheel",
            "--outdir",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = tmp_path.glob("backrun-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = resources.files("backrun.web")
    expected = {
        f"backrun/web/{kind}/{entry.name}"
        for kind in ("templates", "static")
        for entry in package.joinpath(kind).iterdir()
    }
    assert len(expected) >= 10
    assert expected <= names
    assert "backrun/contrib/django/templates/backrun/admin_index.html" in names


def test_pages_reference_no_other_site() -> None:
    """No CDN, no external font: every URL in a page or asset is the dashboard's own."""
    for kind in ("templates", "static"):
        for entry in resources.files("backrun.web").joinpath(kind).iterdir():
            text = entry.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
            for outside in ("http://", "https://", 'src="//', 'href="//', "@import"):
                assert outside not in text, (entry.name, outside)
