"""The README's quickstart runs as documented: every job ends as promised, exit 0."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.cli.procs import REPO, run

SCRIPT = REPO / "examples" / "quickstart" / "main.py"


def test_quickstart_runs_every_kind_of_job_to_its_end(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = run([sys.executable, str(SCRIPT), str(store)], cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert re.search(r"^metrics: http://127\.0\.0\.1:\d+/metrics$", out, re.MULTILINE), out
    rows = [line.split() for line in out.splitlines() if re.match(r"^[0-9a-f]{32} ", line)]
    summary = sorted((row[1], row[2], row[3]) for row in rows)
    assert summary == [
        ("charge_card", "succeeded", "2/3"),
        ("make_thumbnail", "dead", "3/3"),
        ("send_mail", "succeeded", "1/3"),
        ("send_mail", "succeeded", "1/3"),
        ("send_mail", "succeeded", "1/3"),
    ]
    assert "ConnectionError: card network timed out" in out
    assert "FileNotFoundError: missing.png" in out
    assert 'outcome="dead"' in out  # read back from the worker's /metrics
    assert "all 5 jobs finished in" in out
    assert store.is_dir()


def test_quickstart_removes_its_temporary_store(tmp_path: Path) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    result = run([sys.executable, str(SCRIPT)], cwd=tmp_path, env={"TMPDIR": str(temp)}, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 5 jobs finished in" in result.stdout
    assert re.search(r"^removed .*backrun-quickstart-", result.stdout, re.MULTILINE)
    assert list(temp.iterdir()) == []
