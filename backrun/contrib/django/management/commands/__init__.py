"""Management commands: ``backrun_worker`` and ``backrun``."""
