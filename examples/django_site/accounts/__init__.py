"""Accounts: sign-up, and the jobs it causes."""
