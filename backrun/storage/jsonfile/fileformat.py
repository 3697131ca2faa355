"""The JSON store's format version, written at its root and checked by every opener.

The file ``format`` holds the version of the layout and record format the
store is written in, as ``{"version": N}``. A store without it was made by
backrun 0.1.0 (format 1). Format 2 has the same directories; its records may
carry fields 0.1.0 does not know, so a 0.1.0 process must not share it.
Format 3 adds successes recorded by one rename: a ``succeeded/`` file may
still hold its waiting record, with the claim and finish time in an extended
attribute, which a format-2 reader would quarantine as mismatched.

Opening a format-1 or format-2 store upgrades it in place: the only step is writing
``format`` (a temporary file, fsync, one rename, fsync of the root), so a
crash leaves either the old store or the upgraded one, and the next opener
finishes the job. Several openers may race: each writes the same content.
A store whose ``format`` is newer than this code reads is refused with an
error that says to upgrade backrun, never opened and damaged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets

import orjson

from backrun.errors import StorageError
from backrun.storage import fs

__all__ = ["FORMAT", "FORMAT_FILE", "ensure_format", "read_format"]

logger = logging.getLogger("backrun.storage.jsonfile")

FORMAT = 3
"""The newest format this code reads and writes."""
FORMAT_FILE = "format"


def read_format(root: str) -> int:
    """The format version of the store at ``root`` (1 if it has no ``format`` file).

    Raises:
        StorageError: the file is unreadable or holds no version.
    """
    try:
        data = fs.read_file(os.path.join(root, FORMAT_FILE))
    except FileNotFoundError:
        return 1
    except OSError as exc:
        raise StorageError(f"job store {root}: cannot read its format version: {exc}") from exc
    try:
        version = orjson.loads(data)["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(version)
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"job store {root}: its format file is damaged ({data[:60]!r})") from exc
    return version


def ensure_format(root: str) -> None:
    """Refuse a newer store; write ``format`` into a new or format-1 store.

    Args:
        root: the store's root (its subdirectories exist).

    Raises:
        StorageError: the store is newer than this code, its format file is
            damaged, or the format file could not be written.
    """
    version = read_format(root)
    if version == FORMAT:
        return
    if version > FORMAT:
        raise StorageError(
            f"job store {root} has format version {version}, but this backrun reads "
            f"versions up to {FORMAT}: upgrade backrun to open it"
        )
    try:
        if _has_jobs(root):
            logger.warning("upgrading the job store %s from format %d to %d", root, version, FORMAT)
        _write_format(root, os.path.join(root, "tmp"))
    except OSError as exc:
        raise StorageError(f"job store {root}: upgrade to format {FORMAT} failed: {exc}") from exc


def _write_format(root: str, tmp_dir: str) -> None:
    data = orjson.dumps({"version": FORMAT}) + b"\n"
    tmp = os.path.join(tmp_dir, secrets.token_hex(12) + ".tmp")
    fd = fs.open_new(tmp)
    try:
        try:
            fs.write_all(fd, data, tmp)
            fs.fsync(fd, tmp)
        finally:
            fs.close(fd, tmp)
        fs.rename(tmp, os.path.join(root, FORMAT_FILE))
    except OSError:
        with contextlib.suppress(OSError):  # a leftover in tmp/ is swept by upkeep
            fs.unlink(tmp)
        raise
    fs.fsync_dir(root)


def _has_jobs(root: str) -> bool:
    for sub in ("q", "running"):
        try:
            if fs.listdir(os.path.join(root, sub)):
                return True
        except FileNotFoundError:
            continue
    return False
