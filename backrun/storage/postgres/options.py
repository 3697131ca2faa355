"""The PostgreSQL store's tunable settings, shared by its parts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

__all__ = ["Options"]


@dataclass
class Options:
    """Settings every part reads at call time (the store's attributes of the same names)."""

    retention: timedelta
    purge_batch: int
    register_ttl: timedelta
    synchronous_claims: bool
    session_grace: timedelta
