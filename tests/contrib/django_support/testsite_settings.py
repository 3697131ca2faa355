"""The example project's settings, plus one test-only handler module (``testjobs``)."""

from mysite.settings import *  # noqa: F403
from mysite.settings import BACKRUN

BACKRUN = {**BACKRUN, "HANDLERS": ["accounts.jobs", "testjobs"], "SHUTDOWN_TIMEOUT": 20}
DEBUG = False
