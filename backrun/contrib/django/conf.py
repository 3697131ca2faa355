"""The ``BACKRUN`` setting: read lazily, checked, turned into an Engine.

::

    BACKRUN = {
        "STORE": BASE_DIR / "var" / "backrun",   # JSON store (relative: to BASE_DIR)
        # "DSN": "postgresql://...",             # or PostgreSQL (with "SCHEMA")
        "THREADS": 4,                            # jobs one worker process runs at once
        "QUEUES": None,                          # the worker's queues (None = all)
        "SHUTDOWN_TIMEOUT": 30,
        "MAX_RETRIES": 3,
        "JOB_TIMEOUT": 900,                      # seconds; None: no limit
        "HANDLERS": ["shop.jobs"],               # default: every installed app's jobs module
        "METRICS_PORT": None,                    # the worker's Prometheus port
        "SCHEDULES": [                           # periodic jobs: engine.schedule(**entry)
            {"handler": "shop.jobs.cleanup", "cron": "30 2 * * *", "tz": "Europe/Paris"},
        ],
        # "ENGINE": "myproject.jobs:engine",     # or bring your own Engine
    }

The worker settings (``THREADS`` ... ``METRICS_PORT``) are those of
:data:`backrun.settings.SETTINGS`; the table in docs/django.md lists them.
Old spellings (``MAX_PARALLELISM``, ``RETRY``) still work, with a
``backrun.W001`` check warning.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections.abc import Mapping
from typing import Any

from backrun.engine import Engine
from backrun.schedules import schedule_config_problems
from backrun.settings import engine_options, known_keys, read_config, warn_deprecated
from backrun.storage.base import Storage

__all__ = [
    "KNOWN_KEYS",
    "build_engine",
    "handler_modules",
    "read_settings",
    "setting_deprecations",
    "setting_problems",
    "store_path",
]

# Django's own keys (where the engine comes from) and the settings model's.
_OWN_KEYS = frozenset({"STORE", "DSN", "SCHEMA", "HANDLERS", "ENGINE", "SCHEDULES", "RETRY"})
KNOWN_KEYS = _OWN_KEYS | known_keys("django")
_RETRY_KEYS = {"MAX_RETRIES": "MAX_RETRIES", "TIMEOUT": "JOB_TIMEOUT"}
# Settings that only configure a built engine: with ENGINE, the engine is yours.
_ENGINE_BUILT = frozenset({"threads", "max_retries", "job_timeout", "lease",
                           "recovery_interval", "max_crashes"})  # fmt: skip
_ENGINE_SPEC = re.compile(r"\A[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\Z")


def read_settings() -> Mapping[str, Any]:
    """``settings.BACKRUN`` (an empty dict when unset), read at call time."""
    from django.conf import settings

    value = getattr(settings, "BACKRUN", None)
    return {} if value is None else value


def _model_view(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """The model's settings read from ``config``, the old ``RETRY`` dict folded in."""
    flat = dict(config)
    problems: list[str] = []
    deprecations: list[str] = []
    retry = flat.pop("RETRY", None)
    if retry is not None:
        if not isinstance(retry, Mapping) or set(retry) - set(_RETRY_KEYS):
            problems.append("BACKRUN['RETRY'] must be a dict with MAX_RETRIES and/or TIMEOUT")
        else:
            deprecations.append(
                "BACKRUN['RETRY'] is deprecated: use BACKRUN['MAX_RETRIES'] and "
                "BACKRUN['JOB_TIMEOUT']"
            )
            for old, new in _RETRY_KEYS.items():
                if old in retry:
                    if new in flat:
                        problems.append(f"give BACKRUN['{new}'] or BACKRUN['RETRY'], not both")
                    flat[new] = retry[old]
    values, bad, old_names = read_config(flat, "django")
    return values, problems + bad, deprecations + old_names


def setting_deprecations(config: object) -> list[str]:
    """Old spellings used in a ``BACKRUN`` setting, as sentences (``backrun.W001``)."""
    if not isinstance(config, Mapping):
        return []
    return _model_view(config)[2]


def setting_problems(config: object) -> list[str]:
    """Everything wrong with a ``BACKRUN`` setting, as sentences (empty when it is fine)."""
    if not isinstance(config, Mapping):
        return [f"BACKRUN must be a dict, not {type(config).__name__}"]
    problems: list[str] = []
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        known = ", ".join(sorted(KNOWN_KEYS))
        problems.append(f"unknown BACKRUN key(s) {', '.join(unknown)} (known: {known})")
    store = config.get("STORE")
    if store is not None and not isinstance(store, str | os.PathLike):
        problems.append("BACKRUN['STORE'] must be a directory path")
    if store is not None and config.get("DSN") is not None:
        problems.append("give BACKRUN['STORE'] or BACKRUN['DSN'], not both")
    if config.get("DSN") is not None and not isinstance(config["DSN"], str):
        problems.append("BACKRUN['DSN'] must be a PostgreSQL connection string")
    problems.extend(_model_view(config)[1])
    handlers = config.get("HANDLERS")
    if handlers is not None and (
        isinstance(handlers, str)
        or not isinstance(handlers, list | tuple)
        or not all(isinstance(h, str) for h in handlers)
    ):
        problems.append("BACKRUN['HANDLERS'] must be a list of module or package names")
    problems.extend(schedule_config_problems(config.get("SCHEDULES"), "BACKRUN['SCHEDULES']"))
    engine = config.get("ENGINE")
    if engine is not None:
        if not isinstance(engine, str) or _ENGINE_SPEC.match(engine) is None:
            problems.append("BACKRUN['ENGINE'] must be 'module:attribute'")
        engine_keys = {"STORE", "DSN", "SCHEMA", "RETRY", "MAX_PARALLELISM"} | {
            name.upper() for name in _ENGINE_BUILT
        }
        others = sorted(set(config) & engine_keys)
        if others:
            problems.append(f"BACKRUN['ENGINE'] is set: remove {', '.join(others)}")
    return problems


def store_path(config: Mapping[str, Any]) -> str | None:
    """The absolute JSON store directory the setting means (``None`` with ``DSN``/``ENGINE``).

    A relative ``STORE`` (and the default, ``$BACKRUN_DIR`` or ``.backrun``)
    is taken relative to ``settings.BASE_DIR``, not to the current
    directory: ``runserver`` and ``backrun_worker`` started from different
    directories still share one store. Without ``BASE_DIR`` it is the
    current directory's.
    """
    if config.get("DSN") or config.get("ENGINE"):
        return None
    store = config.get("STORE")
    raw = os.fspath(store) if store is not None else (os.environ.get("BACKRUN_DIR") or ".backrun")
    if os.path.isabs(raw):
        return raw
    from django.conf import settings

    base = getattr(settings, "BASE_DIR", None)
    return os.path.abspath(os.path.join(os.fspath(base) if base is not None else ".", raw))


def handler_modules(config: Mapping[str, Any]) -> list[str]:
    """The modules whose handlers are registered: ``HANDLERS``, else each app's ``jobs``."""
    listed = config.get("HANDLERS")
    if listed is not None:
        return list(listed)
    from django.apps import apps

    found = []
    for app in apps.get_app_configs():
        if app.name == "backrun.contrib.django":
            continue
        name = f"{app.name}.jobs"
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            found.append(name)
    return found


def _load_engine(spec: str) -> Engine:
    module_name, _, attr = spec.partition(":")
    target: object = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not isinstance(target, Engine):
        raise TypeError(f"BACKRUN['ENGINE'] {spec!r} is a {type(target).__name__}, not an Engine")
    return target


def build_engine(config: Mapping[str, Any]) -> Engine:
    """An Engine from the setting (the settings check has vetted it).

    Raises:
        django.core.exceptions.ImproperlyConfigured: the setting is invalid.
    """
    problems = setting_problems(config)
    if problems:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("; ".join(problems))
    values, _, deprecations = _model_view(config)
    warn_deprecated(deprecations)
    if config.get("ENGINE"):
        engine = _load_engine(config["ENGINE"])
        if values.get("queues") is not None:
            engine.queues = frozenset(values["queues"])
        if "shutdown_timeout" in values:
            engine.shutdown_timeout = values["shutdown_timeout"]
        return engine
    if config.get("DSN"):
        from backrun.storage.postgres import PostgresStorage

        storage: Storage = PostgresStorage(config["DSN"], schema=config.get("SCHEMA", "backrun"))
    else:
        from backrun.storage.jsonfile import JsonFileStorage

        storage = JsonFileStorage(store_path(config) or ".backrun")
    return Engine(storage, **engine_options(values))
