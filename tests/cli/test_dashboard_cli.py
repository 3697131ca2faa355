"""``backrun dashboard``: binds loopback by default, refuses open binds without auth."""

from __future__ import annotations

import base64
import re
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import backrun
from tests.cli.procs import REPO, Proc
from tests.cli.procs import backrun as run_backrun

pytest.importorskip("jinja2")


def store(tmp_path: Path) -> str:
    path = tmp_path / "store"
    backrun.JsonFileStorage(path, fsync=False).close()
    return str(path)


def serve(*args: str) -> tuple[Proc, str]:
    proc = Proc([sys.executable, "-m", "backrun", "dashboard", *args], cwd=REPO)
    line = proc.wait_for(r"backrun dashboard on http://", timeout=30)
    match = re.search(r"(http://\S+)", line)
    assert match is not None
    return proc, match.group(1)


def fetch(url: str, auth: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_refuses_a_non_loopback_bind_without_auth(tmp_path: Path, host: str) -> None:
    done = run_backrun("dashboard", "--store", store(tmp_path), "--host", host, cwd=tmp_path)
    assert done.returncode == 2
    assert "without authentication" in done.stderr


def test_binds_loopback_by_default_and_serves_the_pages(tmp_path: Path) -> None:
    proc, url = serve("--store", store(tmp_path), "--port", "0")
    try:
        assert url.startswith("http://127.0.0.1:")
        status, html = fetch(url)
        assert status == 200
        assert "<h1>Overview</h1>" in html
        assert fetch(url + "queues")[0] == 200
    finally:
        proc.signal(signal.SIGINT)
        assert proc.wait(20) == 0


def test_basic_auth_allows_an_open_bind(tmp_path: Path) -> None:
    proc, url = serve(
        "--store", store(tmp_path), "--host", "0.0.0.0", "--port", "0", "--basic-auth", "ops:pw"
    )
    try:
        local = re.sub(r"//[^:/]+:", "//127.0.0.1:", url)
        assert fetch(local)[0] == 401
        assert fetch(local, "ops:wrong")[0] == 401
        assert fetch(local, "ops:pw")[0] == 200
    finally:
        proc.signal(signal.SIGINT)
        proc.wait(20)
