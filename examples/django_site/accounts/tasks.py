"""A Django ``@task`` (django.tasks API), run by backrun's task backend."""

from __future__ import annotations

try:
    from django.tasks import task  # Django 6
except ImportError:
    from django_tasks import task  # the backport on Django 5.2

from .models import Account


@task()
def count_accounts(domain: str) -> int:
    """How many accounts have an address at ``domain``."""
    return Account.objects.filter(email__endswith=f"@{domain}").count()
