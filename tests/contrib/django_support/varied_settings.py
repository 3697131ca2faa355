"""The example project's settings, varied by environment for the command tests.

``TEST_BACKRUN_STORE``: BACKRUN["STORE"] (may be relative); ``TEST_BASE_DIR``:
BASE_DIR; ``TEST_NO_OTEL``: make the ``otel`` extra look uninstalled.
"""

import os
from pathlib import Path

if os.environ.get("TEST_NO_OTEL"):
    import no_otel_sdk  # noqa: F401

from mysite.settings import *  # noqa: F403

if os.environ.get("TEST_BASE_DIR"):
    BASE_DIR = Path(os.environ["TEST_BASE_DIR"])

BACKRUN = {"HANDLERS": ["accounts.jobs"], "SHUTDOWN_TIMEOUT": 5}
if os.environ.get("TEST_BACKRUN_STORE"):
    BACKRUN["STORE"] = os.environ["TEST_BACKRUN_STORE"]
DEBUG = False
