"""The ``BACKRUN`` setting: read lazily, checked, turned into an Engine.

::

    BACKRUN = {
        "STORE": BASE_DIR / "var" / "backrun",   # JSON store (relative: to BASE_DIR)
        # "DSN": "postgresql://...",             # or PostgreSQL (with "SCHEMA")
        "MAX_PARALLELISM": 4,
        "QUEUES": None,                          # the worker's queues (None = all)
        "SHUTDOWN_TIMEOUT": 30,
        "RETRY": {"MAX_RETRIES": 3, "TIMEOUT": 900},
        "HANDLERS": ["shop.jobs"],               # default: every installed app's jobs module
        "METRICS_PORT": None,                    # the worker's Prometheus port
        "SCHEDULES": [                           # periodic jobs: engine.schedule(**entry)
            {"handler": "shop.jobs.cleanup", "cron": "30 2 * * *", "tz": "Europe/Paris"},
        ],
        # "ENGINE": "myproject.jobs:engine",     # or bring your own Engine
    }
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from backrun.engine import Engine
from backrun.enqueueing import QUEUE_NAME
from backrun.retries import RetryPolicy
from backrun.schedules import schedule_config_problems

__all__ = [
    "KNOWN_KEYS",
    "build_engine",
    "handler_modules",
    "read_settings",
    "setting_problems",
    "store_path",
]

KNOWN_KEYS = frozenset(
    {
        "STORE",
        "DSN",
        "SCHEMA",
        "MAX_PARALLELISM",
        "QUEUES",
        "SHUTDOWN_TIMEOUT",
        "RETRY",
        "HANDLERS",
        "METRICS_PORT",
        "ENGINE",
        "SCHEDULES",
    }
)
_RETRY_KEYS = frozenset({"MAX_RETRIES", "TIMEOUT"})
_ENGINE_SPEC = re.compile(r"\A[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\Z")


def read_settings() -> Mapping[str, Any]:
    """``settings.BACKRUN`` (an empty dict when unset), read at call time."""
    from django.conf import settings

    value = getattr(settings, "BACKRUN", None)
    return {} if value is None else value


def _is_int(value: object, low: int, high: int | None = None) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= low
        and (high is None or value <= high)
    )


def _is_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


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
    if "MAX_PARALLELISM" in config and not _is_int(config["MAX_PARALLELISM"], 1):
        problems.append("BACKRUN['MAX_PARALLELISM'] must be an int of at least 1")
    queues = config.get("QUEUES")
    if queues is not None and (
        isinstance(queues, str)
        or not isinstance(queues, list | tuple | set | frozenset)
        or not queues
        or not all(isinstance(q, str) and QUEUE_NAME.match(q) for q in queues)
    ):
        problems.append(
            "BACKRUN['QUEUES'] must be None or a list of queue names (A-Z a-z 0-9 _ . -)"
        )
    if "SHUTDOWN_TIMEOUT" in config and not _is_seconds(config["SHUTDOWN_TIMEOUT"]):
        problems.append("BACKRUN['SHUTDOWN_TIMEOUT'] must be a number of seconds")
    retry = config.get("RETRY")
    if retry is not None:
        if not isinstance(retry, Mapping) or set(retry) - _RETRY_KEYS:
            problems.append("BACKRUN['RETRY'] must be a dict with MAX_RETRIES and/or TIMEOUT")
        else:
            if "MAX_RETRIES" in retry and not _is_int(retry["MAX_RETRIES"], 0):
                problems.append("BACKRUN['RETRY']['MAX_RETRIES'] must be an int of 0 or more")
            timeout = retry.get("TIMEOUT")
            if timeout is not None and not (_is_seconds(timeout) and timeout > 0):
                problems.append("BACKRUN['RETRY']['TIMEOUT'] must be positive seconds or None")
    handlers = config.get("HANDLERS")
    if handlers is not None and (
        isinstance(handlers, str)
        or not isinstance(handlers, list | tuple)
        or not all(isinstance(h, str) for h in handlers)
    ):
        problems.append("BACKRUN['HANDLERS'] must be a list of module or package names")
    port = config.get("METRICS_PORT")
    if port is not None and not _is_int(port, 0, 65535):
        problems.append("BACKRUN['METRICS_PORT'] must be a port number (0-65535) or None")
    problems.extend(schedule_config_problems(config.get("SCHEDULES"), "BACKRUN['SCHEDULES']"))
    engine = config.get("ENGINE")
    if engine is not None:
        if not isinstance(engine, str) or _ENGINE_SPEC.match(engine) is None:
            problems.append("BACKRUN['ENGINE'] must be 'module:attribute'")
        others = sorted(set(config) & {"STORE", "DSN", "MAX_PARALLELISM", "RETRY", "SCHEMA"})
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
    if config.get("ENGINE"):
        engine = _load_engine(config["ENGINE"])
        if config.get("QUEUES") is not None:
            engine.queues = frozenset(config["QUEUES"])
        if config.get("SHUTDOWN_TIMEOUT") is not None:
            engine.shutdown_timeout = float(config["SHUTDOWN_TIMEOUT"])
        return engine
    options: dict[str, Any] = {}
    if config.get("DSN"):
        from backrun.storage.postgres import PostgresStorage

        options["storage"] = PostgresStorage(config["DSN"], schema=config.get("SCHEMA", "backrun"))
    else:
        from backrun.storage.jsonfile import JsonFileStorage

        options["storage"] = JsonFileStorage(store_path(config) or ".backrun")
    if "MAX_PARALLELISM" in config:
        options["max_parallelism"] = config["MAX_PARALLELISM"]
    if config.get("QUEUES") is not None:
        options["queues"] = list(config["QUEUES"])
    if "SHUTDOWN_TIMEOUT" in config:
        options["shutdown_timeout"] = float(config["SHUTDOWN_TIMEOUT"])
    retry = config.get("RETRY")
    if retry:
        timeout = retry.get("TIMEOUT", 900)
        options["retry"] = RetryPolicy(
            max_retries=retry.get("MAX_RETRIES", 3),
            timeout=None if timeout is None else timedelta(seconds=timeout),
        )
    return Engine(**options)
