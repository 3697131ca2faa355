"""Background jobs. Each runs inside the app context, so ``current_app`` works."""

from __future__ import annotations

from flask import current_app
from pydantic import BaseModel, Field

from .extensions import jobs


class Welcome(BaseModel):
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    name: str


@jobs.handler(name="send_welcome")
def send_welcome(payload: Welcome) -> None:
    """Pretend to send a mail: append a line to the outbox file."""
    with open(current_app.config["OUTBOX"], "a", encoding="utf-8") as outbox:
        outbox.write(f"Welcome, {payload.name} <{payload.email}>\n")
