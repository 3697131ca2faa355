"""The system check for the ``BACKRUN`` setting (``manage.py check``)."""

from __future__ import annotations

from typing import Any

from django.core import checks

from .conf import read_settings, setting_problems

__all__ = ["check_backrun_setting"]


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
