"""Small helpers shared by the observability modules."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import metadata
from types import MappingProxyType
from typing import Any

__all__ = ["error_type", "library_version", "messaging_attributes"]


@cache
def messaging_attributes(operation: str, queue: str, handler: str) -> Mapping[str, Any]:
    """The semantic-convention attributes every span and instrument of one job carries.

    Built once per (operation, queue, handler) and shared read-only, so the
    tracing and the metrics layers can never disagree on them.
    """
    return MappingProxyType(
        {
            "messaging.system": "backrun",
            "messaging.operation.type": operation,
            "messaging.operation.name": operation,
            "messaging.destination.name": queue,
            "backrun.job.handler": handler,
        }
    )


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
