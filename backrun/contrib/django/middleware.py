"""Database hygiene for jobs: what Django does around a request, done around a job."""

from __future__ import annotations

from backrun.context import JobContext
from backrun.middleware import Middleware, ProcessNext

__all__ = ["CloseOldConnectionsMiddleware"]


class CloseOldConnectionsMiddleware(Middleware):
    """Call ``close_old_connections()`` before and after each attempt.

    Django does this at the start and end of every request; a long-lived
    worker thread needs the same, or it keeps using connections the database
    has dropped, or holds them past ``CONN_MAX_AGE``. Connections are
    per thread, so each slot thread tidies its own.
    """

    def process(self, ctx: JobContext, call_next: ProcessNext) -> None:
        """Close stale connections around the rest of the chain."""
        from django.db import close_old_connections

        close_old_connections()
        try:
            call_next(ctx)
        finally:
            close_old_connections()
