"""Small helpers shared by the observability modules."""

from __future__ import annotations

from functools import cache
from importlib import metadata

__all__ = ["error_type", "library_version"]


def error_type(error: BaseException) -> str:
    """The ``error.type`` of an exception: its class, module-qualified unless builtin."""
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@cache
def library_version() -> str:
    """backrun's installed version, for the instrumentation scope."""
    try:
        return metadata.version("backrun")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"
