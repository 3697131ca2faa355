"""The JSON flat-file store: one package, one module per concern.

``store`` holds :class:`JsonFileStorage`, the store the rest of backrun sees;
``layout`` is the only module that knows the fields of a file name. The parts
are described in docs/architecture.md ("The JSON file store").
"""

from __future__ import annotations

from .store import JsonFileStorage, check_is_store

__all__ = ["JsonFileStorage", "check_is_store"]
