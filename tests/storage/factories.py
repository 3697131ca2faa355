"""Job records for storage tests: the shared helpers of ``tests/helpers.py``, under their old name.

Kept so the JSON store's test files (rewritten concurrently) keep importing
from here; new tests import ``tests.helpers``.
"""

from __future__ import annotations

from tests.helpers import LEASE, T0, make_job

__all__ = ["LEASE", "T0", "make_job"]
