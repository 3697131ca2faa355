"""An app whose handler logs like application code does: its own logger and a warning."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from pydantic import BaseModel

import backrun

engine = backrun.Engine(
    backrun.JsonFileStorage(Path(os.environ["CLI_TEST_STORE"]), fsync=False),
    retry=backrun.RetryPolicy(max_retries=0),
    shutdown_timeout=5.0,
)

log = logging.getLogger(__name__)


class Item(BaseModel):
    n: int


@engine.handler(name="greet")
def greet(item: Item) -> None:
    """Logs at info and debug, warns, and fails for negative numbers."""
    log.info("greeting number %d", item.n)
    log.debug("debug detail for %d", item.n)
    if item.n == 7:
        warnings.warn("seven is unlucky", UserWarning, stacklevel=1)
    if item.n < 0:
        raise ValueError(f"cannot greet {item.n}\nsecond line")
