"""The Django example end to end: views, enqueue_on_commit, the worker command, django.tasks.

Django is configured once for this module, on the example project with a
temporary directory for its database, job store and task-result cache.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

import backrun
from tests.cli.procs import REPO, Proc, run
from tests.helpers import wait_until

django = pytest.importorskip("django")

EXAMPLE = REPO / "examples" / "django_site"
SUPPORT = Path(__file__).parent / "django_support"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    var = tmp_path_factory.mktemp("mysite")
    saved = {k: os.environ.get(k) for k in ("MYSITE_VAR_DIR", "DJANGO_SETTINGS_MODULE")}
    os.environ["MYSITE_VAR_DIR"] = str(var)
    os.environ["DJANGO_SETTINGS_MODULE"] = "testsite_settings"
    sys.path[:0] = [str(EXAMPLE), str(SUPPORT)]
    # Threads alive before setup (a thread of an earlier test may end meanwhile).
    threads_before = set(threading.enumerate())
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    env = {
        "MYSITE_VAR_DIR": str(var),
        "DJANGO_SETTINGS_MODULE": "testsite_settings",
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)]),
    }
    try:
        yield SimpleNamespace(var=var, env=env, threads_before=threads_before)
    finally:
        from backrun.contrib.django import reset_engine

        reset_engine()
        for path in (str(EXAMPLE), str(SUPPORT)):
            sys.path.remove(path)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _manage(*args: str) -> list[str]:
    return [sys.executable, "manage.py", *args]


def test_ready_starts_no_threads_and_builds_no_engine(site: SimpleNamespace) -> None:
    import backrun.contrib.django as integration

    assert set(threading.enumerate()) - site.threads_before == set()  # setup started none
    assert integration._engine is None
    assert not (site.var / "backrun").exists()
    assert integration.engine is integration.get_engine()  # built on first use
    assert (site.var / "backrun").is_dir()
    names = integration.get_engine().registry.names()
    assert {"accounts.send_welcome", "tests.wait_for_gate", "django.task"} <= set(names)


def test_views_and_tasks_run_by_manage_py_backrun_worker(site: SimpleNamespace) -> None:
    from accounts.models import Account
    from accounts.tasks import count_accounts
    from django.test import Client

    from backrun.contrib.django import get_engine

    engine = get_engine()
    client = Client()
    worker = Proc(_manage("backrun_worker", "--threads", "2"), cwd=EXAMPLE, env=site.env)
    try:
        worker.wait_for("ready: waiting for jobs")
        assert "app:         Django settings.BACKRUN" in worker.output
        assert "    - accounts.send_welcome" in worker.output

        response = client.post(
            "/signup/", {"email": "ada@example.com", "name": "Ada"}, content_type="application/json"
        )
        assert response.status_code == 202, response.content
        pk = response.json()["account_id"]
        wait_until(
            lambda: client.get(f"/accounts/{pk}/").json()["welcomed_at"] is not None,
            what="the welcome job to run",
        )
        [job] = [
            j
            for j in engine.jobs(limit=1000)
            if j.handler == "accounts.send_welcome" and j.payload == {"account_id": pk}
        ]
        # The handler's effect shows before the worker has recorded the outcome: wait for it.
        wait_until(
            lambda: engine.get(job.id).state is backrun.JobState.SUCCEEDED,  # type: ignore[union-attr]
            what="the welcome job's outcome to be recorded",
        )

        report = client.post("/reports/?domain=example.com")
        assert report.status_code == 202
        result_id = report.json()["result_id"]
        wait_until(lambda: count_accounts.get_result(result_id).is_finished, what="the report task")
        result = count_accounts.get_result(result_id)
        assert str(result.status) == "SUCCESSFUL"
        assert result.return_value == Account.objects.filter(email__endswith="@example.com").count()

        slow = engine.enqueue("tests.wait_for_gate", {"name": "gate"})
        worker.wait_for(rf"tests\.wait_for_gate\[{slow.id}\] started")
        worker.signal(signal.SIGTERM)
        worker.wait_for(r"SIGTERM received: .* for 1 running job")
        (site.var / "gate").touch()
        assert worker.wait() == 0, worker.output
    finally:
        worker.kill()
    assert engine.get(slow.id).state is backrun.JobState.SUCCEEDED
    assert "worker stopped cleanly" in worker.output

    listed = run(
        _manage("backrun", "jobs", "list", "--settings", "testsite_settings", "--json"),
        cwd=EXAMPLE,
        env=site.env,
    )
    assert listed.returncode == 0, listed.stderr
    assert {slow.id, job.id, result_id} <= {j["id"] for j in json.loads(listed.stdout)}


def test_enqueue_on_commit_follows_the_transaction(site: SimpleNamespace) -> None:
    from accounts.models import Account
    from django.db import transaction

    from backrun.contrib.django import enqueue_on_commit, get_engine

    engine = get_engine()
    account = Account.objects.create(email="grace@example.com", name="Grace")
    payload = {"account_id": account.pk}

    def welcome_jobs() -> int:
        return sum(
            1
            for j in engine.jobs(limit=1000)
            if j.handler == "accounts.send_welcome" and j.payload == payload
        )

    def enqueue_then_fail() -> None:
        with transaction.atomic():
            enqueue_on_commit("accounts.send_welcome", payload)
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError, match="roll back"):
        enqueue_then_fail()
    assert welcome_jobs() == 0

    with transaction.atomic():
        enqueue_on_commit("accounts.send_welcome", payload, queue="mail")
        assert welcome_jobs() == 0  # not before COMMIT
    assert welcome_jobs() == 1

    with pytest.raises(ValidationError), transaction.atomic():
        enqueue_on_commit("accounts.send_welcome", {"account_id": "not a number"})
    assert welcome_jobs() == 1


def test_tasks_backend_enqueue_get_result_and_signals(site: SimpleNamespace) -> None:
    from accounts.tasks import count_accounts
    from django.utils import timezone
    from testjobs import explode

    from backrun.contrib.django import get_engine
    from backrun.contrib.django.tasks import BackrunBackend, _exceptions, _root, _signals

    engine = get_engine()
    backend = _root.task_backends["default"]
    assert isinstance(backend, BackrunBackend)
    assert (backend.supports_defer, backend.supports_get_result, backend.supports_priority) == (
        True,
        True,
        True,
    )
    heard: list[tuple[str, str, str]] = []

    def listen(name: str) -> Any:
        def receiver(sender: object, task_result: Any, **kwargs: Any) -> None:
            heard.append((name, task_result.id, str(task_result.status)))

        return receiver

    receivers = {n: listen(n) for n in ("enqueued", "started", "finished")}
    for name, receiver in receivers.items():
        getattr(_signals, f"task_{name}").connect(receiver)
    try:
        ok = count_accounts.using(priority=5).enqueue("example.org")
        bad = explode.enqueue("boom")
        assert str(ok.status) == "READY"
        assert str(count_accounts.get_result(ok.id).status) == "READY"
        assert engine.get(ok.id).priority == 5
        later = count_accounts.using(run_after=timezone.now() + timedelta(hours=1)).enqueue("x")
        assert engine.get(later.id).state is backrun.JobState.SCHEDULED
        assert str(backend.get_result(later.id).status) == "READY"

        engine.run_until_idle(timeout=20)
    finally:
        for name, receiver in receivers.items():
            getattr(_signals, f"task_{name}").disconnect(receiver)
    done = count_accounts.get_result(ok.id)
    assert str(done.status) == "SUCCESSFUL"
    assert done.return_value == 0
    assert engine.get(ok.id).result == 0  # type: ignore[union-attr]  # the store, no cache
    assert backend.supports_get_result
    assert done.attempts == 1
    failed = backend.get_result(bad.id)
    assert str(failed.status) == "FAILED"
    assert [e.exception_class_path for e in failed.errors] == ["builtins.ValueError"]
    assert failed.errors[0].exception_class is ValueError
    assert "boom" in failed.errors[0].traceback
    assert engine.get(bad.id).attempts == 1  # MAX_RETRIES defaults to 0, as Django expects
    assert [h for h in heard if h[1] == ok.id] == [
        ("enqueued", ok.id, "READY"),
        ("started", ok.id, "RUNNING"),
        ("finished", ok.id, "SUCCESSFUL"),
    ]
    assert [h for h in heard if h[1] == bad.id][-1] == ("finished", bad.id, "FAILED")

    welcome = engine.enqueue("accounts.send_welcome", {"account_id": 1}).id
    for unknown in ("0" * 32, "not-an-id", welcome):
        with pytest.raises(_exceptions.TaskResultDoesNotExist):
            backend.get_result(unknown)


def test_system_check_reports_a_bad_backrun_setting(site: SimpleNamespace) -> None:
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError
    from django.test import override_settings

    from backrun.contrib.django.checks import check_backrun_setting

    assert check_backrun_setting() == []
    bad = {"THREADS": 0, "COLOUR": "blue", "QUEUES": ["a b"], "RETRY": {"TRIES": 2}}
    with override_settings(BACKRUN=bad):
        errors = check_backrun_setting()
        assert {e.id for e in errors} == {"backrun.E001"}
        text = " | ".join(e.msg for e in errors)
        assert "unknown BACKRUN key(s) COLOUR" in text
        assert "BACKRUN['THREADS'] must be at least 1" in text
        assert "BACKRUN['QUEUES'] bad queue name 'a b'" in text
        assert "RETRY'] must be a dict with MAX_RETRIES" in text
        with pytest.raises(SystemCheckError, match=r"backrun\.E001"):
            call_command("check")
    with override_settings(BACKRUN=["not", "a", "dict"]):
        assert [e.msg for e in check_backrun_setting()] == ["BACKRUN must be a dict, not list"]


def test_task_backend_check_refuses_queue_names_backrun_cannot_store(site: SimpleNamespace) -> None:
    from backrun.contrib.django.tasks import BackrunBackend

    backend = BackrunBackend("reports", {"QUEUES": ["default", "high priority"]})
    assert [(e.id, e.msg) for e in backend.check()] == [
        ("backrun.E002", "TASKS['reports']: queue name 'high priority' is not valid for backrun")
    ]


def test_worker_middleware_closes_connections_past_their_age(site: SimpleNamespace) -> None:
    import time

    from django.db import connection

    from backrun.contrib.django.middleware import CloseOldConnectionsMiddleware

    seen: list[bool] = []

    def handler(ctx: Any) -> None:
        seen.append(connection.connection is None)  # closed before the job
        connection.ensure_connection()
        connection.close_at = time.monotonic() - 1  # as CONN_MAX_AGE expiring mid-job

    connection.ensure_connection()
    connection.close_at = time.monotonic() - 1
    CloseOldConnectionsMiddleware().process(None, handler)  # type: ignore[arg-type]
    assert seen == [True]
    assert connection.connection is None  # and after it
