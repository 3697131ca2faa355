"""Sign up (enqueues the welcome mail after COMMIT), look an account up, run a report task."""

from __future__ import annotations

import json

from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from backrun.contrib.django import enqueue_on_commit

from .models import Account
from .tasks import count_accounts


@csrf_exempt  # an API endpoint for the example; use CSRF tokens in real forms
@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    """Create the account and, once it is committed, send the welcome mail."""
    data = json.loads(request.body or b"{}")
    try:
        with transaction.atomic():
            account = Account.objects.create(email=data["email"], name=data.get("name", ""))
            # Runs only if the transaction commits: a rollback sends no mail.
            enqueue_on_commit("accounts.send_welcome", {"account_id": account.pk})
    except (KeyError, IntegrityError):
        return JsonResponse({"error": "a new email address is required"}, status=400)
    return JsonResponse({"account_id": account.pk}, status=202)


@require_GET
def account(request: HttpRequest, pk: int) -> JsonResponse:
    """An account and whether it was welcomed."""
    found = get_object_or_404(Account, pk=pk)
    welcomed = found.welcomed_at.isoformat() if found.welcomed_at else None
    return JsonResponse({"id": found.pk, "email": found.email, "welcomed_at": welcomed})


@csrf_exempt
@require_POST
def report(request: HttpRequest) -> JsonResponse:
    """Start a report through django.tasks; the result id can be polled."""
    result = count_accounts.enqueue(request.GET.get("domain", "example.com"))
    return JsonResponse({"result_id": result.id, "status": str(result.status)}, status=202)
