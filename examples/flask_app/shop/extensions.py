"""Extensions, created unbound so handlers and views can import them."""

from backrun.contrib.flask import Backrun

jobs = Backrun()
