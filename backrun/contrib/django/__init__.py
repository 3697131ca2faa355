"""Django integration: settings, the engine accessor, ``enqueue_on_commit``.

Add ``"backrun.contrib.django"`` to ``INSTALLED_APPS`` and configure it with
one ``BACKRUN`` dict (see :mod:`backrun.contrib.django.conf`). Then::

    from backrun.contrib.django import enqueue_on_commit, get_engine

    get_engine().enqueue("send_welcome", {"user_id": user.pk})   # now
    enqueue_on_commit("send_welcome", {"user_id": user.pk})       # after COMMIT

``backrun.contrib.django.engine`` is the same engine as ``get_engine()``.
It is built on first use, once per process, with the handlers of
``BACKRUN["HANDLERS"]`` (default: every installed app's ``jobs`` module).
Run the worker with ``python manage.py backrun_worker``.
"""

from __future__ import annotations

import threading
from typing import Any

from backrun.engine import Engine

__all__ = ["enqueue_on_commit", "get_engine", "reset_engine"]

_lock = threading.RLock()
_engine: Engine | None = None


def get_engine() -> Engine:
    """The project's engine, built from ``settings.BACKRUN`` on first call.

    Raises:
        django.core.exceptions.ImproperlyConfigured: the setting is invalid.
    """
    global _engine
    engine = _engine
    if engine is not None:
        return engine
    with _lock:
        if _engine is None:
            from backrun.schedules import apply_schedules

            from .conf import build_engine, handler_modules, read_settings

            config = read_settings()
            built = build_engine(config)
            # Published before discovery: a jobs module may use get_engine() itself.
            _engine = built
            try:
                _register_task_handler(built)
                for module in handler_modules(config):
                    built.add_handlers_from_package(module)
                apply_schedules(built, config.get("SCHEDULES") or (), "BACKRUN['SCHEDULES']")
            except BaseException:
                _engine = None
                raise
        return _engine


def _register_task_handler(engine: Engine) -> None:
    try:
        from .tasks import TASK_HANDLER, run_task, task_retry_policy
    except ImportError:  # neither django.tasks (Django 6) nor django-tasks installed
        return
    if engine.registry.get(TASK_HANDLER) is None:
        engine.add_handler(run_task, name=TASK_HANDLER, retry=task_retry_policy())


def reset_engine() -> None:
    """Forget the engine (closing its store), so the next use rebuilds it from settings.

    Called when ``BACKRUN`` changes (``override_settings`` in tests).
    """
    global _engine
    with _lock:
        engine, _engine = _engine, None
    if engine is not None:
        engine.close()


def enqueue_on_commit(
    handler: Any, payload: object = None, *, using: str | None = None, **options: Any
) -> None:
    """Enqueue a job once the current database transaction commits.

    The payload is validated now (a ``pydantic.ValidationError`` is raised
    in the view), the job is written in ``transaction.on_commit``: a rolled
    back transaction enqueues nothing. Outside a transaction (autocommit),
    the job is enqueued at once.

    Args:
        handler: a registered handler class, function or name.
        payload: its payload (model or mapping).
        using: the database alias whose transaction to follow.
        **options: ``delay``, ``at``, ``queue``, ``priority``, ``headers`` as
            for :meth:`Engine.enqueue`.
    """
    from django.db import transaction

    engine = get_engine()
    data = engine.registry.resolve(handler).dump({} if payload is None else payload)

    def enqueue() -> None:
        engine.enqueue(handler, data, **options)

    transaction.on_commit(enqueue, using=using)


def __getattr__(name: str) -> Any:
    if name == "engine":
        return get_engine()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
