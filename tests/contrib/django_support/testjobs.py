"""A job that holds its worker slot until the test opens the gate (a file)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pydantic import BaseModel

import backrun


class Gate(BaseModel):
    name: str


@backrun.handler(name="tests.wait_for_gate")
def wait_for_gate(payload: Gate) -> None:
    """Return once ``$MYSITE_VAR_DIR/<name>`` exists."""
    gate = Path(os.environ["MYSITE_VAR_DIR"]) / payload.name
    pause = threading.Event()
    while not gate.exists():
        pause.wait(0.01)


try:
    from django.tasks import task  # Django 6
except ImportError:
    from django_tasks import task


@task()
def explode(message: str) -> None:
    """A Django task that always fails."""
    raise ValueError(message)
