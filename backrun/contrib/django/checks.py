"""The system checks for the ``BACKRUN`` setting and its store (``manage.py check``)."""

from __future__ import annotations

import os
import stat
from typing import Any

from django.core import checks

from backrun.errors import StorageError

from .conf import read_settings, setting_deprecations, setting_problems, store_path

__all__ = [
    "check_backrun_deprecations",
    "check_backrun_setting",
    "check_backrun_store",
    "store_problem",
]


@checks.register()  # type: ignore[untyped-decorator]
def check_backrun_setting(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """One ``backrun.E001`` error per problem found in ``settings.BACKRUN``."""
    return [
        checks.Error(
            problem,
            hint="See docs/django.md for the BACKRUN keys.",
            obj="settings.BACKRUN",
            id="backrun.E001",
        )
        for problem in setting_problems(read_settings())
    ]


@checks.register()  # type: ignore[untyped-decorator]
def check_backrun_deprecations(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """One ``backrun.W001`` warning per old spelling in ``settings.BACKRUN`` (it still works)."""
    return [
        checks.Warning(
            message,
            hint="See the settings table in docs/django.md.",
            obj="settings.BACKRUN",
            id="backrun.W001",
        )
        for message in setting_deprecations(read_settings())
    ]


@checks.register()  # type: ignore[untyped-decorator]
def check_backrun_store(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``backrun.E002`` when the JSON store cannot be used (the worker would exit 3).

    Looks without creating or changing anything.
    """
    config = read_settings()
    if setting_problems(config):
        return []  # E001 says what to fix first
    path = store_path(config)
    if path is None:
        return []
    problem = store_problem(path)
    if problem is None:
        return []
    return [
        checks.Error(
            f"the backrun job store is unusable: {problem}",
            hint="Fix the directory (or BACKRUN['STORE']); the worker refuses to start.",
            obj="settings.BACKRUN",
            id="backrun.E002",
        )
    ]


def store_problem(path: str) -> str | None:
    """Why a JSON store at ``path`` could not be opened or created, or ``None``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if parent and not os.access(parent, os.W_OK | os.X_OK):
            return f"{path} does not exist and {parent} is not writable by this user"
        return None
    except OSError as exc:
        return f"{path}: {exc}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symlink; give the real path"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != os.geteuid():
        return f"{path} is owned by uid {st.st_uid}, not by this user"
    if st.st_mode & 0o022:
        return (
            f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
            "run chmod 700 on it"
        )
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return f"{path} is not writable by this user"
    from backrun.storage.jsonfile import JsonFileStorage

    try:
        JsonFileStorage(path, create=False).close()
    except StorageError as exc:
        if "is not a backrun job store" in str(exc):
            return None  # an empty or new directory: the worker sets it up
        return str(exc)
    return None
