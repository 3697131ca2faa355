"""Background jobs. Each runs inside the app context, so ``current_app`` works."""

from __future__ import annotations

import os

from flask import current_app
from pydantic import BaseModel, Field

from .extensions import jobs


class Welcome(BaseModel):
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    name: str


@jobs.handler(name="send_welcome")
def send_welcome(payload: Welcome) -> None:
    """Pretend to send a mail: append a line to the outbox file."""
    path = current_app.config["OUTBOX"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as outbox:
        outbox.write(f"Welcome, {payload.name} <{payload.email}>\n")
