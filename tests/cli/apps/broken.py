"""A module that fails on import, as a mistyped app would."""

raise RuntimeError("settings missing: DATABASE_URL")
