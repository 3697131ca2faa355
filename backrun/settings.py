"""The worker and engine settings, defined once.

Each :class:`Setting` has one name, a type, a default, a sentence of
documentation and a check. Everything else is derived from :data:`SETTINGS`:
the keyword arguments of :class:`~backrun.engine.Engine` (typed by
:class:`EngineOptions`, used with ``Unpack``), the flags of ``backrun worker``
(also ``manage.py backrun_worker`` and ``flask backrun worker``), the keys
of Django's ``BACKRUN`` setting and its system checks, Flask's ``BACKRUN_*``
config keys, and the settings tables of ``docs/cli.md``, ``docs/django.md``
and ``docs/flask.md`` (a test compares them with :func:`markdown_table`).

Old names keep working for a while: each front end maps them to the one
name and warns (``DeprecationWarning``; a Django system check warning).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypedDict

from .enqueueing import QUEUE_NAME
from .retries import DEFAULT_JOB_TIMEOUT, DEFAULT_MAX_RETRIES, RetryPolicy

__all__ = [
    "SETTINGS",
    "EngineOptions",
    "Frontend",
    "Setting",
    "engine_options",
    "find",
    "for_frontend",
    "known_keys",
    "markdown_table",
    "read_config",
    "warn_deprecated",
]

Frontend = Literal["engine", "cli", "django", "flask"]


class EngineOptions(TypedDict, total=False):
    """The :class:`~backrun.engine.Engine` keyword arguments the settings model feeds.

    Use it as Procrastinate uses its ``WorkerOptions``: ``**options:
    Unpack[EngineOptions]`` in a function that passes them on to ``Engine``.
    """

    threads: int
    queues: Collection[str] | None
    shutdown_timeout: float
    lease: timedelta
    recovery_interval: float
    max_crashes: int
    retry: RetryPolicy


def _int(low: int, high: int | None = None) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"must be a whole number, not {type(value).__name__}")
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be at least {low}" if high is None else f"must be {low}-{high}")
        return value

    return check


def _seconds(*, positive: bool) -> Callable[[object], float]:
    def check(value: object) -> float:
        if isinstance(value, timedelta):
            value = value.total_seconds()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"must be a number of seconds, not {type(value).__name__}")
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ValueError("must be a positive number of seconds" if positive else
                             "must be 0 or more seconds")  # fmt: skip
        return float(value)

    return check


def _optional(check: Callable[[object], Any]) -> Callable[[object], Any]:
    def optional(value: object) -> Any:
        return None if value is None else check(value)

    return optional


def _queues(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [q.strip() for q in value.split(",") if q.strip()]
    if not isinstance(value, Iterable) or isinstance(value, bytes | Mapping):
        raise TypeError("must be a list of queue names, or None for all")
    names = tuple(value)
    if not names:
        raise ValueError("must name at least one queue (None means all)")
    for name in names:
        if not isinstance(name, str) or QUEUE_NAME.match(name) is None:
            raise ValueError(f"bad queue name {name!r}: use 1-64 characters of A-Z a-z 0-9 _ . -")
    return names


def _choice(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        assert isinstance(value, str)
        return value

    return check


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("must be True or False")
    return value


@dataclass(frozen=True, slots=True)
class Setting:
    """One worker or engine setting, as every front end names and checks it.

    Attributes:
        name: the one name: the ``Engine`` keyword, the CLI flag
            (``--name-with-dashes``), Django's key (``NAME``) and Flask's
            (``BACKRUN_NAME``).
        doc: one sentence for help texts and the docs tables.
        default: the value when it is not given (``None``: off, or all).
        check: returns the value normalised, or raises ``TypeError`` or
            ``ValueError`` with the end of a sentence ("must be ...").
        where: the front ends that accept it.
        metavar: the CLI placeholder.
        old_names: deprecated names (``Engine``, Django, Flask), still
            accepted with a warning.
        old_flags: deprecated CLI flags, still accepted with a warning.
        flag: a CLI switch taking no value.
    """

    name: str
    doc: str
    default: object
    check: Callable[[object], Any]
    where: frozenset[Frontend]
    metavar: str = "N"
    old_names: tuple[str, ...] = ()
    old_flags: tuple[str, ...] = ()
    flag: bool = False

    @property
    def cli(self) -> str:
        """The ``backrun worker`` flag."""
        return "--" + self.name.replace("_", "-")

    @property
    def django(self) -> str:
        """The key in Django's ``BACKRUN`` dict."""
        return self.name.upper()

    @property
    def flask(self) -> str:
        """The Flask config key."""
        return "BACKRUN_" + self.name.upper()

    def key(self, frontend: Frontend, name: str | None = None) -> str:
        """How ``frontend`` spells this setting's name (or one of its old names)."""
        name = self.name if name is None else name
        if frontend == "cli":
            return "--" + name.replace("_", "-")
        if frontend == "django":
            return name.upper()
        if frontend == "flask":
            return "BACKRUN_" + name.upper()
        return name

    def parse(self, value: object, *, label: str | None = None) -> Any:
        """Check ``value``; raise ``ValueError`` naming the setting (``label``) if it is bad."""
        try:
            return self.check(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{label or self.name} {exc}") from None


_ALL: frozenset[Frontend] = frozenset({"engine", "cli", "django", "flask"})
_CONFIG: frozenset[Frontend] = frozenset({"engine", "django", "flask"})
_WORKER_RUN: frozenset[Frontend] = frozenset({"cli", "django", "flask"})
_CLI: frozenset[Frontend] = frozenset({"cli"})

SETTINGS: tuple[Setting, ...] = (
    Setting("threads", "jobs one worker process runs at once (its slot threads)", 4,
            _int(1), _ALL, old_names=("max_parallelism",), old_flags=("--concurrency",)),
    Setting("queues", "the queues the worker takes jobs from (all when unset)", None,
            _queues, _ALL, metavar="A,B"),
    Setting("shutdown_timeout", "seconds a stopping worker lets running jobs finish "
            "before it releases them back to the queue", 30.0,
            _seconds(positive=False), _ALL, metavar="S"),
    Setting("max_retries", "retries after a failed first attempt, unless the handler's "
            "RetryPolicy says otherwise", DEFAULT_MAX_RETRIES, _int(0), _CONFIG),
    Setting("job_timeout", "seconds an attempt may run before it times out (None: never)",
            DEFAULT_JOB_TIMEOUT.total_seconds(), _optional(_seconds(positive=True)),
            _CONFIG, metavar="S"),
    Setting("lease", "seconds a claim stays valid without a heartbeat (renewed every "
            "third of it)", 60.0, _seconds(positive=True), _CONFIG, metavar="S"),
    Setting("recovery_interval", "seconds between a worker's scans for the jobs of dead "
            "workers", 2.0, _seconds(positive=True), _CONFIG, metavar="S"),
    Setting("max_crashes", "worker crashes a job may cause before it is DEAD", 3,
            _int(1), _CONFIG),
    Setting("metrics_port", "serve Prometheus metrics on this port (0: any free port)",
            None, _optional(_int(0, 65535)), _WORKER_RUN, metavar="P"),
    Setting("metrics_addr", "the metrics server's bind address", "127.0.0.1",
            lambda v: v if isinstance(v, str) else _bad("must be an address"), _CLI,
            metavar="ADDR"),
    Setting("log_format", "format of every log line, the application's included",
            "text", _choice("text", "json"), _CLI, metavar="text|json"),
    Setting("log_level", "debug, info, warning, error or critical; applies to every "
            "logger", "info", _choice("debug", "info", "warning", "error", "critical"),
            _CLI, metavar="LEVEL"),
    Setting("processes", "run N supervised child processes of --threads slots each "
            "(restarted if they die)", None, _optional(_int(1)), _CLI),
    Setting("max_jobs_per_child", "replace a child after it ran this many jobs (it "
            "finishes its running jobs first)", None, _optional(_int(1)), _CLI, metavar="K"),
    Setting("max_memory_per_child", "replace a child once its resident memory exceeds "
            "this many megabytes", None, _optional(_int(1)), _CLI, metavar="MB"),
    Setting("reload", "development only: restart the worker when a .py file under the "
            "current directory changes (needs backrun[reload])", False, _flag, _CLI,
            flag=True),
)  # fmt: skip
"""Every setting, in the order the docs tables list them."""

_BY_NAME = {s.name: s for s in SETTINGS}


def _bad(message: str) -> Any:
    raise ValueError(message)


def find(name: str) -> Setting:
    """The setting called ``name`` (its current name).

    Raises:
        KeyError: no setting has this name.
    """
    return _BY_NAME[name]


def for_frontend(frontend: Frontend) -> list[Setting]:
    """The settings ``frontend`` accepts, in table order."""
    return [s for s in SETTINGS if frontend in s.where]


def read_config(
    config: Mapping[str, Any], frontend: Literal["django", "flask"]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Read the settings ``frontend`` accepts out of ``config``.

    Only keys that are set (and not ``None``, where ``None`` is not a value
    of its own) are read; old names are mapped to the one name.

    Returns:
        ``(values, problems, deprecations)``: the checked values by setting
        name; sentences about bad values; sentences about old names used.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    deprecations: list[str] = []
    for setting in for_frontend(frontend):
        for name in (setting.name, *setting.old_names):
            key = setting.key(frontend, name)
            if key not in config:
                continue
            label = _label(frontend, key)
            if name != setting.name:
                new = _label(frontend, setting.key(frontend))
                deprecations.append(f"{label} is deprecated: use {new}")
                if setting.name in values:
                    problems.append(f"give {new} or {label}, not both")
                    continue
            try:
                values[setting.name] = setting.parse(config[key], label=label)
            except ValueError as exc:
                problems.append(str(exc))
    return values, problems, deprecations


def known_keys(frontend: Literal["django", "flask"]) -> frozenset[str]:
    """Every key ``frontend`` reads from the model, old names included."""
    return frozenset(
        s.key(frontend, n) for s in for_frontend(frontend) for n in (s.name, *s.old_names)
    )


def _label(frontend: str, key: str) -> str:
    return f"BACKRUN[{key!r}]" if frontend == "django" else key


def engine_options(values: Mapping[str, Any]) -> EngineOptions:
    """The ``Engine`` keyword arguments for checked ``values`` (from :func:`read_config`).

    ``max_retries`` and ``job_timeout`` become one ``retry`` policy; settings
    no engine takes (``metrics_port``) are left out.
    """
    options: EngineOptions = {}
    if "threads" in values:
        options["threads"] = values["threads"]
    if values.get("queues") is not None:
        options["queues"] = values["queues"]
    if "shutdown_timeout" in values:
        options["shutdown_timeout"] = values["shutdown_timeout"]
    if "lease" in values:
        options["lease"] = timedelta(seconds=values["lease"])
    if "recovery_interval" in values:
        options["recovery_interval"] = values["recovery_interval"]
    if "max_crashes" in values:
        options["max_crashes"] = values["max_crashes"]
    if "max_retries" in values or "job_timeout" in values:
        timeout = values.get("job_timeout", DEFAULT_JOB_TIMEOUT.total_seconds())
        options["retry"] = RetryPolicy(
            max_retries=values.get("max_retries", DEFAULT_MAX_RETRIES),
            timeout=None if timeout is None else timedelta(seconds=timeout),
        )
    return options


def warn_deprecated(messages: Iterable[str], *, stacklevel: int = 3) -> None:
    """Emit one ``DeprecationWarning`` per message."""
    for message in messages:
        warnings.warn(message, DeprecationWarning, stacklevel=stacklevel)


def _shown(setting: Setting, frontend: str) -> str:
    default = setting.default
    if default is None:
        text = "all" if setting.name == "queues" else "none"
    elif default is False:
        text = "off"
    elif isinstance(default, float) and default.is_integer():
        text = str(int(default))
    else:
        text = str(default)
    if frontend == "cli" and "engine" in setting.where:
        return f"the engine's ({text})"
    return text


def markdown_table(frontend: Literal["cli", "django", "flask"]) -> str:
    """The settings table of ``frontend``'s page in ``docs/``, generated from the model."""
    head = {"cli": "Flag", "django": "`BACKRUN` key", "flask": "Config key"}[frontend]
    lines = [f"| {head} | Default | Meaning |", "| --- | --- | --- |"]
    for setting in for_frontend(frontend):
        key = setting.key(frontend)
        if frontend == "cli" and not setting.flag:
            key = f"{key} {setting.metavar}"
        olds = (
            list(setting.old_flags)
            if frontend == "cli"
            else [setting.key(frontend, n) for n in setting.old_names]
        )
        old = ", ".join(f"`{n}`" for n in olds)
        note = f" (deprecated: {old})" if old else ""
        row = f"| `{key}` | {_shown(setting, frontend)} | {setting.doc}{note} |"
        lines.append(row.replace("text|json", "text\\|json"))
    return "\n".join(lines) + "\n"
