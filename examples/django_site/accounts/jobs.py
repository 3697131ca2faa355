"""backrun handlers of the accounts app, found by discovery (``<app>.jobs``)."""

from __future__ import annotations

from django.utils import timezone
from pydantic import BaseModel

import backrun

from .models import Account


class Welcome(BaseModel):
    account_id: int


@backrun.handler(name="accounts.send_welcome")
def send_welcome(payload: Welcome, ctx: backrun.JobContext) -> None:
    """Send the welcome mail once: the job id would be the mail's idempotency key."""
    account = Account.objects.get(pk=payload.account_id)
    if account.welcomed_at is not None:
        return  # a re-run after a crash: already done
    # mailer.send(account.email, "Welcome!", idempotency_key=ctx.job.id)
    account.welcomed_at = timezone.now()
    account.save(update_fields=["welcomed_at"])
