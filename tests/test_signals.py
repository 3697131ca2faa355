"""run_forever in a real process: SIGTERM drains; a second SIGINT forces a release."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

PROGRAM = Path(__file__).parent / "programs" / "signal_worker.py"


def _start(tmp_path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(PROGRAM), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    return proc


def test_sigterm_waits_for_the_running_job_then_exits(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    proc.send_signal(signal.SIGTERM)
    (tmp_path / "go").touch()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"drained": True, "state": "succeeded", "attempts": 1}


def test_second_sigint_releases_the_job_without_charging(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    for line in proc.stderr:  # signals do not queue: wait until the first was handled
        if "stopping" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"drained": False, "state": "queued", "attempts": 0}
