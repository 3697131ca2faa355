"""Schedules from configuration: Django ``BACKRUN["SCHEDULES"]`` (and its system check), Flask."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import backrun
from backrun.schedules import apply_schedules, schedule_config_problems

GOOD = [
    {"handler": "cleanup", "cron": "30 2 * * *", "tz": "Europe/Paris", "name": "nightly"},
    {"handler": "cleanup", "every": 90, "misfire": "skip", "payload": {"days": 3}},
]


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ({"handler": "x", "every": 1}, "must be a list of dicts"),
        ("cleanup", "must be a list of dicts"),
        ([5], "[0] must be a dict"),
        ([{"every": 10}], "[0]: 'handler' must be"),
        ([{"handler": "x", "every": 10, "cronn": "*"}], "[0]: unknown key(s) cronn"),
        ([{"handler": "x", "cron": "99 * * * *"}], "[0]: cron: Bad minute"),
        ([{"handler": "x"}], "[0]: cron/every: give exactly one"),
        ([{"handler": "x", "every": 10, "tz": "Nowhere/Else"}], "[0]: tz: unknown time zone"),
        ([{"handler": "x", "every": 10, "misfire": "all"}], "[0]: misfire must be"),
        ([{"handler": "x", "every": 10, "queue": "a b"}], "[0]: queue names are"),
        ([{"handler": "x", "every": 10}, {"handler": "x", "every": 20}], "[1]: name 'x' is used"),
    ],
)
def test_problems_name_the_entry_and_the_field(entries: object, fragment: str) -> None:
    problems = schedule_config_problems(entries, "SETTING")
    assert len(problems) == 1, problems
    assert problems[0].startswith("SETTING")
    assert fragment in problems[0]


def test_good_entries_have_no_problems_and_apply() -> None:
    assert schedule_config_problems(GOOD, "S") == []
    assert schedule_config_problems(None, "S") == []
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[])
    engine.add_handler(lambda payload: None, name="cleanup")
    declared = apply_schedules(engine, GOOD)
    assert [s.name for s in declared] == ["nightly", "cleanup"]
    assert declared[1].payload == {"days": 3}
    assert declared[1].misfire == "skip"


def test_apply_refuses_bad_entries_and_unknown_handlers() -> None:
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[])
    with pytest.raises(ValueError, match=r"S\[0\]: cron"):
        apply_schedules(engine, [{"handler": "cleanup", "cron": "x"}], "S")
    with pytest.raises(backrun.UnknownHandler):
        apply_schedules(engine, [{"handler": "cleanup", "every": 10}])


# -- Django -------------------------------------------------------------------


def test_django_system_check_reports_bad_schedules(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("django")
    from backrun.contrib.django import checks

    config = {"SCHEDULES": [{"handler": "cleanup", "cron": "61 * * * *"}]}
    monkeypatch.setattr(checks, "read_settings", lambda: config)
    (error,) = checks.check_backrun_setting()
    assert error.id == "backrun.E001"
    assert error.msg.startswith("BACKRUN['SCHEDULES'][0]: cron: Bad minute")
    monkeypatch.setattr(checks, "read_settings", lambda: {"SCHEDULES": GOOD})
    assert checks.check_backrun_setting() == []


@pytest.fixture
def django_engine_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    pytest.importorskip("django")
    import backrun.contrib.django as integration
    from backrun.contrib.django import conf

    config: dict[str, Any] = {"STORE": str(tmp_path / "store"), "HANDLERS": [__name__]}
    monkeypatch.setattr(conf, "read_settings", lambda: config)
    monkeypatch.setattr(integration, "_register_task_handler", lambda engine: None)
    integration.reset_engine()
    yield config
    integration.reset_engine()


@backrun.handler(name="cleanup")
def cleanup(payload: dict[str, int]) -> None:
    return None


def test_django_engine_declares_the_configured_schedules(
    django_engine_config: dict[str, Any],
) -> None:
    from backrun.contrib.django import get_engine

    django_engine_config["SCHEDULES"] = GOOD
    names = [s.name for s in get_engine().schedules()]
    assert names == ["cleanup", "nightly"]


def test_django_engine_refuses_bad_schedules(django_engine_config: dict[str, Any]) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from backrun.contrib.django import get_engine

    django_engine_config["SCHEDULES"] = [{"handler": "cleanup", "every": 0}]
    with pytest.raises(ImproperlyConfigured, match=r"BACKRUN\['SCHEDULES'\]\[0\]: every"):
        get_engine()


# -- Flask --------------------------------------------------------------------


def test_flask_backrun_schedules(tmp_path: Path) -> None:
    flask = pytest.importorskip("flask")
    from backrun.contrib.flask import Backrun

    app = flask.Flask("schedules_test")
    app.config["BACKRUN_STORE"] = str(tmp_path / "store")
    app.config["BACKRUN_SCHEDULES"] = GOOD
    ext = Backrun(app)
    ext.add_handler(cleanup, name="cleanup")
    engine = ext.engine_for(app)
    assert [s.name for s in engine.schedules()] == ["cleanup", "nightly"]
    engine.close()


def test_flask_bad_schedules_fail_at_engine_build(tmp_path: Path) -> None:
    flask = pytest.importorskip("flask")
    from backrun.contrib.flask import Backrun

    app = flask.Flask("schedules_test_bad")
    app.config["BACKRUN_STORE"] = str(tmp_path / "store")
    app.config["BACKRUN_SCHEDULES"] = [{"handler": "cleanup", "every": 5, "tz": "Mars/Base"}]
    ext = Backrun(app)
    ext.add_handler(cleanup, name="cleanup")
    with pytest.raises(ValueError, match=r"BACKRUN_SCHEDULES\[0\]: tz"):
        ext.engine_for(app)
