"""``backrun jobs``, ``stats`` and ``db`` through real processes: output, errors, exit codes."""

from __future__ import annotations

import json
import os
import pty
import sys
from pathlib import Path
from types import ModuleType

import pytest

import backrun
from tests.cli.conftest import APPS, one_error_line, state_of
from tests.cli.procs import backrun as run_backrun
from tests.cli.procs import run


def test_jobs_list_show_retry_cancel_purge_stats(
    finished_jobs: dict[str, str], store: Path, cliapp: ModuleType, tmp_path: Path
) -> None:
    ok, bad, other = finished_jobs["ok"], finished_jobs["bad"], finished_jobs["other"]
    where = ["--store", str(store)]

    listing = run_backrun("jobs", "list", *where, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].split()[:3] == ["ID", "STATE", "QUEUE"]
    rows = {line.split()[0]: line.split()[1] for line in listing.stdout.splitlines()[1:]}
    assert rows == {ok: "succeeded", bad: "dead", other: "succeeded"}
    assert "ValueError: negative: -5" in listing.stdout

    dead = run_backrun("jobs", "list", "--state", "dead", "--json", *where, cwd=tmp_path)
    assert [j["id"] for j in json.loads(dead.stdout)] == [bad]
    mail = run_backrun("jobs", "list", "--queue", "mail", "--json", *where, cwd=tmp_path)
    assert [j["id"] for j in json.loads(mail.stdout)] == [other]

    show = run_backrun("jobs", "show", bad, *where, cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    assert "state:     dead" in show.stdout
    assert "attempt 1 at" in show.stdout
    assert "attempt 2 at" in show.stdout
    assert show.stdout.count(": ValueError: negative: -5") == 2  # one per attempt
    assert show.stdout.count("Traceback (most recent call last)") == 1  # the last attempt's
    shown = json.loads(run_backrun("jobs", "show", bad, "--json", *where, cwd=tmp_path).stdout)
    assert shown["id"] == bad
    assert len(shown["errors"]) == 2

    stats = json.loads(run_backrun("stats", "--json", *where, cwd=tmp_path).stdout)
    assert stats["queues"]["default"]["succeeded"] == 1
    assert stats["queues"]["default"]["dead"] == 1
    assert stats["queues"]["mail"]["succeeded"] == 1
    text = run_backrun("stats", *where, cwd=tmp_path).stdout
    assert text.splitlines()[0].split() == [
        "QUEUE", "SCHEDULED", "QUEUED", "RUNNING", "SUCCEEDED", "DEAD", "CANCELLED", "OLDEST",
        "READY",
    ]  # fmt: skip

    retried = run_backrun("jobs", "retry", bad, *where, cwd=tmp_path)
    assert retried.returncode == 0
    assert f"retrying {bad}: queued" in retried.stdout
    assert state_of(cliapp, bad) == "queued"
    stats = json.loads(run_backrun("stats", "--json", *where, cwd=tmp_path).stdout)
    assert stats["queues"]["default"]["queued"] == 1
    assert stats["queues"]["default"]["oldest_ready_age_s"] >= 0

    cancelled = run_backrun("jobs", "cancel", bad, *where, cwd=tmp_path)
    assert cancelled.returncode == 0
    assert f"cancelled {bad}" in cancelled.stdout
    assert state_of(cliapp, bad) == "cancelled"
    again = run_backrun("jobs", "cancel", ok, *where, cwd=tmp_path)
    assert f"{ok} is already succeeded" in again.stdout

    refused = run_backrun("jobs", "retry", ok, *where, cwd=tmp_path)
    assert refused.returncode == 1
    assert one_error_line(refused).startswith(f"error: cannot retry {ok}")

    kept = run_backrun(
        "jobs", "purge", "--state", "succeeded", "--older-than", "7d", *where, cwd=tmp_path
    )
    assert kept.returncode == 0
    assert "purged 0 succeeded job(s)" in kept.stdout
    purged = run_backrun(
        "jobs", "purge", "--state", "finished", "--older-than", "0s", "--json", *where,
        cwd=tmp_path,
    )  # fmt: skip
    assert json.loads(purged.stdout)["purged"] == 3
    assert run_backrun("jobs", "list", *where, cwd=tmp_path).stdout == "no jobs\n"


def test_retry_all_dead_and_the_app_and_env_ways_to_name_the_store(
    cliapp: ModuleType, app_env: dict[str, str], store: Path
) -> None:
    engine = cliapp.engine
    ids = [engine.enqueue("work", {"n": -i}).id for i in range(1, 4)]
    now = engine.clock.now()
    for _job_id in ids:  # make them DEAD without a worker: claim, then record DEAD
        [job] = engine.storage.claim(
            queues=None, limit=1, now=now, worker_id="t-1-aaaaaaaa", lease=engine.lease
        )
        engine.storage.update(job.replace(state=backrun.JobState.DEAD, finished_at=now))
    by_app = run_backrun(
        "jobs", "list", "--state", "dead", "--app", "cliapp:engine", cwd=APPS, env=app_env
    )
    assert by_app.returncode == 0, by_app.stderr
    assert sorted(line.split()[0] for line in by_app.stdout.splitlines()[1:]) == sorted(ids)

    env = {**app_env, "BACKRUN_APP": "cliapp:engine"}
    result = run_backrun("jobs", "retry", "--all-dead", "--json", cwd=APPS, env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(result.stdout)["retried"]) == sorted(ids)
    assert {state_of(cliapp, i) for i in ids} == {"queued"}

    default_dir = run_backrun("stats", "--json", cwd=store.parent, env={"BACKRUN_DIR": str(store)})
    assert json.loads(default_dir.stdout)["queues"]["default"]["queued"] == 3


def test_retry_all_dead_draws_a_progress_bar_on_a_terminal(
    cliapp: ModuleType, store: Path, tmp_path: Path
) -> None:
    engine = cliapp.engine
    for i in range(3):
        engine.enqueue("work", {"n": i})
        now = engine.clock.now()
        [job] = engine.storage.claim(
            queues=None, limit=1, now=now, worker_id="t-1-aaaaaaaa", lease=engine.lease
        )
        engine.storage.update(job.replace(state=backrun.JobState.DEAD, finished_at=now))
    controller, terminal = pty.openpty()
    try:
        result = run(
            [sys.executable, "-m", "backrun", "jobs", "retry", "--all-dead", "--store", str(store)],
            cwd=tmp_path,
            stderr=terminal,
        )
        os.close(terminal)
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
    assert result.returncode == 0
    assert result.stdout == "retried 3 dead job(s)\n"
    assert b"retrying dead jobs [" in drawn
    assert b"] 3/3" in drawn
    piped = run_backrun("jobs", "retry", "--all-dead", "--store", str(store), cwd=tmp_path)
    assert piped.stderr == ""  # no bar when stderr is not a terminal
    assert piped.stdout == "retried 0 dead job(s)\n"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["worker", "nosuchmodule:engine"], 2, "error: cannot import 'nosuchmodule': "),
        (["worker", "broken:engine"], 2, "error: cannot import 'broken': RuntimeError: settings"),
        (["worker", "cliapp:not_an_engine"], 2, "is a dict, not a backrun.Engine"),
        (["worker", "cliapp:nothing"], 2, "error: module 'cliapp' has no attribute 'nothing'"),
        (["worker", "not a spec"], 2, "is not MODULE:ENGINE"),
        (["worker"], 2, "give the engine to run"),
        (["worker", "cliapp:engine", "--threads", "0"], 2, "must be at least 1"),
        (["jobs", "show", "../../etc/passwd", "--app", "cliapp:engine"], 2, "not a backrun job id"),
        (["jobs", "show", "0" * 32, "--app", "cliapp:engine"], 1, f"error: no job {'0' * 32}"),
        (["jobs", "cancel", "f" * 32, "--app", "cliapp:engine"], 1, "error: no job"),
        (["jobs", "retry", "--app", "cliapp:engine"], 2, "give a job id or --all-dead"),
        (["jobs", "purge", "--state", "queued", "--older-than", "1d"], 2, "only finished jobs"),
        (["jobs", "purge", "--state", "dead", "--older-than", "soon"], 2, "not a duration"),
        (["jobs", "list", "--store", "/nonexistent/store"], 3, "does not exist"),
        (["jobs", "list", "--state", "zombie"], 2, "unknown state 'zombie'"),
        (["jobs", "list", "--limit", "0"], 2, "argument --limit: must be at least 1"),
    ],
)
def test_errors_are_one_line_with_the_documented_exit_code(
    args: list[str], code: int, message: str, app_env: dict[str, str], store: Path
) -> None:
    backrun.JsonFileStorage(store).close()
    if args[:2] == ["jobs", "purge"]:
        args = [*args, "--store", str(store)]
    result = run_backrun(*args, cwd=APPS, env=app_env)
    assert result.returncode == code, result.stderr
    assert message in one_error_line(result)


def test_store_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = run_backrun("stats", "--store", str(a_file), cwd=tmp_path)
    assert result.returncode == 3
    assert "is not a directory" in one_error_line(result)


def test_store_directory_that_is_not_writable_is_refused(immutable_dir: Path) -> None:
    result = run_backrun(
        "jobs", "retry", "--all-dead", "--store", str(immutable_dir), cwd=immutable_dir.parent
    )
    assert result.returncode == 3, result.stderr
    assert "is not writable" in one_error_line(result)


def test_no_store_named_is_a_usage_error(tmp_path: Path) -> None:
    result = run_backrun("jobs", "list", cwd=tmp_path)
    assert result.returncode == 2
    assert "no store: pass --store PATH or --app MODULE:ENGINE" in one_error_line(result)


def test_usage_errors_and_help(tmp_path: Path) -> None:
    bad = run_backrun("jobs", "frobnicate", cwd=tmp_path)
    assert bad.returncode == 2
    assert "invalid choice: 'frobnicate'" in one_error_line(bad)
    helped = run_backrun("worker", "--help", cwd=tmp_path)
    assert helped.returncode == 0
    for option in ("--queues", "--threads", "--metrics-port", "--shutdown-timeout"):
        assert option in helped.stdout
    assert run_backrun("--version", cwd=tmp_path).stdout.strip() == f"backrun {backrun.__version__}"


def test_db_init_migrates_postgres(tmp_path: Path) -> None:
    dsn = os.environ.get("BACKRUN_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        import psycopg

        psycopg.connect(dsn, connect_timeout=3).close()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL required in CI: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {dsn}: {exc}")
    schema = f"backrun_cli_{os.getpid()}"
    try:
        first = run_backrun("db", "init", "--dsn", dsn, "--schema", schema, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert "applied migration(s)" in first.stdout
        second = run_backrun("db", "init", "--dsn", dsn, "--schema", schema, "--json", cwd=tmp_path)
        assert json.loads(second.stdout) == {"schema": schema, "applied": []}
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    unreachable = "postgresql://postgres@127.0.0.1:1/none"
    down = run_backrun("db", "init", "--dsn", unreachable, "--timeout", "0.5", cwd=tmp_path)
    assert down.returncode == 3
    one_error_line(down)
