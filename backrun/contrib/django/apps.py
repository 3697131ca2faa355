"""The Django app config: registers the system check, starts nothing."""

from __future__ import annotations

from django.apps import AppConfig


class BackrunConfig(AppConfig):  # type: ignore[misc]
    """``INSTALLED_APPS += ["backrun.contrib.django"]``.

    ``ready()`` only registers the settings check: the development server's
    reloader runs it twice, so it must start no threads, open no store and
    build no engine. The engine is built on first use (see ``get_engine``).
    """

    name = "backrun.contrib.django"
    label = "backrun"
    verbose_name = "backrun"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        """Register the settings check; rebuild the engine when ``BACKRUN`` changes."""
        from django.core.signals import setting_changed

        from . import checks  # noqa: F401  (registers on import)

        setting_changed.connect(_on_setting_changed, dispatch_uid="backrun-setting-changed")
        _link_from_admin_index()


def _link_from_admin_index() -> None:
    """Show a link to the dashboard on the admin index, unless the project has its own index."""
    from django.apps import apps

    if not apps.is_installed("django.contrib.admin"):
        return
    from django.contrib import admin

    if admin.site.index_template is None:
        admin.site.index_template = "backrun/admin_index.html"


def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    if setting == "BACKRUN":
        from . import reset_engine

        reset_engine()
