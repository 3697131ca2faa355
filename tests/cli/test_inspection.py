"""Inspection changes nothing, says what it left out, and fails in one line (issue 11: 5, 8, 9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.cli.conftest import APPS, one_error_line
from tests.cli.procs import backrun as run_backrun
from tests.cli.procs import child_env


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its mode, size and modification time."""
    found = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        found[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


@pytest.mark.parametrize(
    "command", [["jobs", "list"], ["jobs", "show", "0" * 32], ["stats"], ["jobs", "purge"]]
)
def test_a_directory_that_is_not_a_store_is_refused_and_left_alone(
    tmp_path: Path, command: list[str]
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir(mode=0o700)
    (plain / "notes.txt").write_text("mine")
    before = _tree(plain)
    if command == ["jobs", "purge"]:
        command = [*command, "--state", "dead", "--older-than", "1d"]
    result = run_backrun(*command, "--store", str(plain), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "is not a backrun job store" in one_error_line(result)
    assert _tree(plain) == before


def test_read_only_commands_change_nothing_in_a_store(
    cliapp: ModuleType, store: Path, tmp_path: Path
) -> None:
    ok = cliapp.engine.enqueue("work", {"n": 1})
    cliapp.engine.enqueue("work", {"n": 2}, queue="mail")
    before = _tree(store)
    for command in (["jobs", "list"], ["jobs", "show", ok.id], ["stats"], ["stats", "--json"]):
        result = run_backrun(*command, "--store", str(store), cwd=tmp_path)
        assert result.returncode == 0, (command, result.stderr)
    assert _tree(store) == before


def test_read_only_commands_work_on_a_store_this_user_cannot_write(
    cliapp: ModuleType, store: Path, tmp_path: Path
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    cliapp.engine.enqueue("work", {"n": 1})
    store.chmod(0o500)
    try:
        result = run_backrun("jobs", "list", "--store", str(store), cwd=tmp_path)
    finally:
        store.chmod(0o700)
    assert result.returncode == 0, result.stderr


def test_list_says_how_many_it_left_out(cliapp: ModuleType, store: Path, tmp_path: Path) -> None:
    for n in range(5):
        cliapp.engine.enqueue("work", {"n": n})
    cliapp.engine.enqueue("work", {"n": 1}, queue="mail")
    cut = run_backrun("jobs", "list", "--limit", "2", "--store", str(store), cwd=tmp_path)
    assert cut.returncode == 0
    assert len(cut.stdout.splitlines()) == 3  # header and two rows
    assert cut.stderr == "showing 2 of 6 jobs (oldest first; use --limit N for more)\n"
    queue = run_backrun(
        "jobs", "list", "--queue", "default", "--limit", "4", "--store", str(store), cwd=tmp_path
    )
    assert queue.stderr.startswith("showing 4 of 5 jobs")
    whole = run_backrun("jobs", "list", "--limit", "6", "--store", str(store), cwd=tmp_path)
    assert whole.stderr == ""


def test_a_closed_pipe_ends_the_listing_quietly(
    cliapp: ModuleType, store: Path, tmp_path: Path
) -> None:
    for n in range(3):
        cliapp.engine.enqueue("work", {"n": n})
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written, as with `| head -0`
    try:
        done = subprocess.run(
            [sys.executable, "-m", "backrun", "jobs", "list", "--store", str(store)],
            cwd=tmp_path,
            env=child_env(),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert done.stderr == ""
    assert done.returncode == 0


def test_show_trims_the_traceback_to_the_handler(
    finished_jobs: dict[str, str], store: Path, tmp_path: Path
) -> None:
    shown = run_backrun("jobs", "show", finished_jobs["bad"], "--store", str(store), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Traceback"))
    frames = [line.strip() for line in lines[start:] if line.strip().startswith("File ")]
    assert frames, shown.stdout
    assert "cliapp.py" in frames[0], frames  # the handler's frame comes first
    assert not [f for f in frames if f"{os.sep}backrun{os.sep}" in f], frames
    assert "backrun frame(s) hidden" in lines[start + 1]
    assert lines[-1].strip() == "ValueError: negative: -5"


def test_import_error_names_file_and_line_and_offers_traceback(tmp_path: Path) -> None:
    result = run_backrun("worker", "broken:engine", cwd=APPS)
    assert result.returncode == 2
    line = one_error_line(result)
    assert line == (
        "error: cannot import 'broken': RuntimeError: settings missing: DATABASE_URL "
        "(broken.py:3); run with --traceback for the full traceback"
    )
    full = run_backrun("worker", "broken:engine", "--traceback", cwd=APPS)
    assert full.returncode == 2
    assert full.stderr.startswith("Traceback (most recent call last):")
    assert 'broken.py", line 3' in full.stderr
    assert full.stderr.strip().splitlines()[-1] == line


def test_syntax_error_in_the_app_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "typo.py").write_text("engine = 1\nif True\n    pass\n")
    result = run_backrun("jobs", "list", "--app", "typo:engine", cwd=tmp_path)
    assert result.returncode == 2
    assert "SyntaxError" in one_error_line(result)
    assert "(typo.py:2)" in one_error_line(result)


def test_a_missing_module_points_at_no_backrun_file(tmp_path: Path) -> None:
    result = run_backrun("worker", "nosuchmodule:engine", cwd=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "No module named 'nosuchmodule'" in line
    assert ".py:" not in line  # no location inside backrun's own import call
