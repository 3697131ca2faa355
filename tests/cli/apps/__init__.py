"""Apps the CLI tests import in child processes."""
