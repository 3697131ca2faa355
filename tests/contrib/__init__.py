"""Tests of backrun's user-facing integrations."""
