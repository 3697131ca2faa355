"""The HTTP side: sign up (enqueues a job) and look a job up."""

from __future__ import annotations

from flask import Blueprint, abort, request
from pydantic import ValidationError

from .extensions import jobs

bp = Blueprint("shop", __name__)


@bp.post("/signup")
def signup() -> tuple[dict[str, str], int]:
    """Create the account (not shown), then send the welcome mail in the background."""
    data = request.get_json(force=True)
    try:
        job = jobs.enqueue("send_welcome", {"email": data.get("email"), "name": data.get("name")})
    except ValidationError as exc:
        return {"error": str(exc.errors()[0]["msg"])}, 400
    return {"job_id": job.id, "state": job.state.value}, 202


@bp.get("/jobs/<job_id>")
def job_status(job_id: str) -> dict[str, object]:
    """A job's state, for the page that polls it."""
    try:
        job = jobs.engine.get(job_id)
    except ValueError:
        abort(404)
    if job is None:
        abort(404)
    return {"id": job.id, "state": job.state.value, "attempts": job.attempts}
