"""Where the JSON store keeps progress files and follow-up intent files.

Progress: one small file per claim.

``progress/<job id>~<claim token>.json`` holds the latest ``ctx.progress``
of that claim, replaced by a rename. The running file itself is never
rewritten for progress (that would race the owner's heartbeat, which stamps
its mtime); readers lay the progress over the running record, and the
job's outcome record carries the last progress itself. A file whose claim
has ended is removed by ``maintain``.
"""

from __future__ import annotations

import os

import orjson

from backrun.jobs import Progress
from backrun.serialization import progress_from_dict
from backrun.storage import fs

from .layout import claim_name

__all__ = ["followups_dir", "progress_dir", "progress_path", "read_progress"]


def followups_dir(root: str) -> str:
    """The directory of follow-up intent files (see ``jsonfile.results``)."""
    return os.path.join(root, "followups")


def progress_dir(root: str) -> str:
    """The directory of progress files."""
    return os.path.join(root, "progress")


def progress_path(root: str, job_id: str, token: str) -> str:
    """The progress file of claim ``token`` of ``job_id`` (both checked by the caller)."""
    return os.path.join(progress_dir(root), claim_name(job_id, token, ".json"))


def read_progress(root: str, job_id: str, token: str) -> Progress | None:
    """The progress claim ``token`` of ``job_id`` last stored, or ``None``."""
    try:
        data = fs.read_file(progress_path(root, job_id, token))
    except OSError:
        return None
    try:
        return progress_from_dict(orjson.loads(data))
    except (ValueError, orjson.JSONDecodeError):
        return None
