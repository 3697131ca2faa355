"""One settings model: the CLI, Django, Flask, the Engine and the docs all follow it.

Run with ``BACKRUN_UPDATE_DOCS=1`` to rewrite the docs tables from the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import warnings
from pathlib import Path
from typing import Any, get_type_hints

import pytest

import backrun
from backrun.cli._worker import WorkerOptions, add_worker_arguments, options_from_namespace
from backrun.retries import DEFAULT_JOB_TIMEOUT, DEFAULT_MAX_RETRIES, RetryPolicy
from backrun.settings import (
    SETTINGS,
    EngineOptions,
    engine_options,
    for_frontend,
    known_keys,
    markdown_table,
    read_config,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"
_BLOCK = re.compile(
    r"(<!-- settings-table: (\w+) [^>]*-->\n)(.*?)(<!-- /settings-table -->)", re.DOTALL
)


def _render(text: str) -> str:
    return _BLOCK.sub(lambda m: m[1] + markdown_table(m[2]) + m[4], text)  # type: ignore[arg-type]


@pytest.mark.parametrize("page", ["cli.md", "django.md", "flask.md"])
def test_the_docs_tables_are_the_models(page: str) -> None:
    path = DOCS / page
    text = path.read_text()
    assert _BLOCK.search(text), f"{page} has no settings-table block"
    rendered = _render(text)
    if os.environ.get("BACKRUN_UPDATE_DOCS") == "1" and rendered != text:
        path.write_text(rendered)
        text = rendered
    assert text == rendered, f"{page}: run BACKRUN_UPDATE_DOCS=1 pytest tests/test_settings.py"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_worker_arguments(parser)
    return parser


def test_the_cli_accepts_exactly_the_models_cli_settings() -> None:
    flags = {
        option
        for action in _parser()._actions
        for option in action.option_strings
        if option not in ("-h", "--help")
    }
    model = {s.cli for s in for_frontend("cli")} | {
        old for s in for_frontend("cli") for old in s.old_flags
    }
    assert flags == model
    assert {f.name for f in dataclasses.fields(WorkerOptions)} == {
        s.name for s in for_frontend("cli")
    }


def test_a_cli_flag_is_checked_by_the_model() -> None:
    parser = _parser()
    ns = parser.parse_args(["--threads", "3", "--queues", "a,b", "--shutdown-timeout", "2.5"])
    options = options_from_namespace(ns)
    assert (options.threads, options.queues, options.shutdown_timeout) == (3, ["a", "b"], 2.5)
    for bad in (["--threads", "0"], ["--queues", "a b"], ["--shutdown-timeout", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_the_old_cli_flag_still_works_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    options = options_from_namespace(_parser().parse_args(["--concurrency", "5"]))
    assert options.threads == 5
    assert "--concurrency is deprecated; use --threads" in capsys.readouterr().err


def test_django_accepts_exactly_the_models_keys() -> None:
    from backrun.contrib.django.conf import KNOWN_KEYS, setting_problems

    own = {"STORE", "DSN", "SCHEMA", "HANDLERS", "ENGINE", "SCHEDULES", "RETRY"}
    assert known_keys("django") == {
        s.key("django", n) for s in for_frontend("django") for n in (s.name, *s.old_names)
    }
    assert own | known_keys("django") == KNOWN_KEYS
    for setting in SETTINGS:
        key = setting.key("django")
        problems = setting_problems({key: setting.default})
        if "django" in setting.where:
            assert problems == [], key
        else:
            assert any("unknown BACKRUN key" in p for p in problems), key


def test_django_reads_the_new_keys_and_the_old_ones_with_a_warning() -> None:
    from backrun.contrib.django.conf import setting_deprecations, setting_problems

    new = {"THREADS": 2, "MAX_RETRIES": 1, "JOB_TIMEOUT": 5}
    assert setting_problems(new) == []
    assert setting_deprecations(new) == []
    old = {"MAX_PARALLELISM": 2, "RETRY": {"MAX_RETRIES": 1, "TIMEOUT": 5}}
    assert setting_problems(old) == []
    assert setting_deprecations(old) == [
        "BACKRUN['RETRY'] is deprecated: use BACKRUN['MAX_RETRIES'] and BACKRUN['JOB_TIMEOUT']",
        "BACKRUN['MAX_PARALLELISM'] is deprecated: use BACKRUN['THREADS']",
    ]
    assert setting_problems({"THREADS": 2, "MAX_PARALLELISM": 3}) == [
        "give BACKRUN['THREADS'] or BACKRUN['MAX_PARALLELISM'], not both"
    ]


def test_flask_accepts_exactly_the_models_keys(tmp_path: Path) -> None:
    from flask import Flask

    from backrun.contrib.flask import FLASK_KEYS, Backrun

    own = {"BACKRUN_STORE", "BACKRUN_STORAGE", "BACKRUN_HANDLER_PACKAGES", "BACKRUN_SCHEDULES"}
    assert own | known_keys("flask") == FLASK_KEYS
    app = Flask("settings_probe")
    app.config.update(
        BACKRUN_STORE=str(tmp_path / "s"),
        BACKRUN_THREADS=3,
        BACKRUN_LEASE=30,
        BACKRUN_MAX_RETRIES=1,
        BACKRUN_JOB_TIMEOUT=None,  # None: unset, the default
    )
    ext = Backrun(app)
    with app.app_context(), warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = ext.engine
    assert engine.threads == 3
    assert engine.lease.total_seconds() == 30
    assert engine.retry_policy.max_retries == 1
    assert engine.retry_policy.timeout == DEFAULT_JOB_TIMEOUT


def test_flask_warns_about_old_and_unknown_keys_and_refuses_bad_values(tmp_path: Path) -> None:
    from flask import Flask

    from backrun.contrib.flask import Backrun

    app = Flask("settings_old")
    app.config.update(
        BACKRUN_STORE=str(tmp_path / "s"), BACKRUN_MAX_PARALLELISM=2, BACKRUN_THREDS=4
    )
    ext = Backrun(app)
    with (
        app.app_context(),
        pytest.warns(DeprecationWarning, match="BACKRUN_MAX_PARALLELISM is deprecated"),
        pytest.warns(UserWarning, match="unknown Flask config key.*BACKRUN_THREDS"),
    ):
        engine = ext.engine
    assert engine.threads == 2
    bad = Flask("settings_bad")
    bad.config.update(BACKRUN_STORE=str(tmp_path / "b"), BACKRUN_THREADS=0)
    with bad.app_context(), pytest.raises(ValueError, match="BACKRUN_THREADS must be at least 1"):
        _ = Backrun(bad).engine
    assert not (tmp_path / "b").exists()  # refused before the store was made


def test_the_engine_takes_the_models_settings_and_its_defaults() -> None:
    params = inspect.signature(backrun.Engine).parameters
    hints = get_type_hints(EngineOptions)
    engine_settings = {s.name for s in for_frontend("engine")} - {"max_retries", "job_timeout"}
    assert set(hints) == engine_settings | {"retry"}
    assert set(hints) <= set(params)
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[])
    for setting in for_frontend("engine"):
        if setting.name in ("max_retries", "job_timeout", "queues"):
            continue
        value = getattr(engine, setting.name)
        value = value.total_seconds() if setting.name == "lease" else value
        assert value == setting.default, setting.name
    assert engine.queues is None
    engine.close()


def test_the_retry_defaults_are_written_once() -> None:
    assert RetryPolicy().max_retries == DEFAULT_MAX_RETRIES == 3
    assert RetryPolicy().timeout == DEFAULT_JOB_TIMEOUT
    values, problems, _ = read_config({"MAX_RETRIES": 0}, "django")
    assert problems == []
    retry = engine_options(values)["retry"]
    assert (retry.max_retries, retry.timeout) == (0, DEFAULT_JOB_TIMEOUT)


def test_the_old_engine_names_still_work_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="use threads="):
        engine = backrun.Engine(backrun.MemoryStorage(), middleware=[], max_parallelism=2)
    assert engine.threads == 2
    with pytest.warns(DeprecationWarning, match="Engine.threads"):
        assert engine.max_parallelism == 2
    with pytest.raises(TypeError, match="not both"):
        backrun.Engine(backrun.MemoryStorage(), threads=1, max_parallelism=2)
    engine.close()


def test_every_setting_has_a_doc_and_a_valid_default() -> None:
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    for setting in SETTINGS:
        assert setting.doc, setting.name
        assert setting.where, setting.name
        checked: Any = setting.check(setting.default)
        assert checked == setting.default or setting.name == "queues", setting.name
