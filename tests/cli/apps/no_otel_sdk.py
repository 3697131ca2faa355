"""Import this first to make the process look like one without the ``otel`` extra.

The OpenTelemetry API (a backrun dependency) stays; the SDK and the OTLP
exporters become unimportable, as after ``pip install backrun`` alone.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType

MISSING = ("opentelemetry.sdk", "opentelemetry.exporter")


class _Missing(MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.startswith(MISSING):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


for _name in [n for n in sys.modules if n.startswith(MISSING)]:
    del sys.modules[_name]
sys.meta_path.insert(0, _Missing())
