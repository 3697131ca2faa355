"""backrun: sync-first background jobs."""
