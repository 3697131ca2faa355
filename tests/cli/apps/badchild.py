"""An app that imports in the supervising parent but fails in every child (a broken deploy)."""

from __future__ import annotations

import os

import backrun

if "BACKRUN_SUPERVISOR_FD" in os.environ:
    raise RuntimeError("broken deploy: this module fails in worker processes")

engine = backrun.Engine(backrun.MemoryStorage(), middleware=[])
