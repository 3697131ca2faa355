"""The JSON store's format version, and the upgrade of older stores in place.

The file ``format`` at the root holds the version of the layout the store was
written in. A store without it was made by backrun 0.1.0 (format 1), whose
layout is the same but for ``ids/``, the reservation of every job's id (see
:mod:`backrun.storage._jsonfile_ids`). Opening such a store upgrades it:

1. under ``migrate.lock`` (an ``flock``: one upgrader at a time, dropped by
   the kernel if it dies), look again for ``format``;
2. reserve the id of every job found (running, waiting, finished, and the
   records of a committed batch), each an atomic link; an existing one is kept;
3. fsync ``ids/``, then write ``format`` (temporary file, fsync, rename,
   fsync of the root): the commit point.

A crash before the commit leaves no ``format`` file and the next opener does
it all again (reserving an id twice is harmless); after it, the store is v2.
A store whose ``format`` is newer than this code reads is refused. Processes
of backrun 0.1.0 must be stopped before the upgrade: they neither read
``format`` nor reserve the ids of the jobs they add.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Iterator

from backrun.errors import StorageError

from . import fs
from ._jsonfile_files import Files
from ._jsonfile_layout import FINISHED_DIRS, parse_grab, parse_ready, parse_running
from ._jsonfile_locks import LockHolder

__all__ = ["FORMAT", "FORMAT_FILE", "ensure_format", "read_format"]

logger = logging.getLogger("backrun.storage.jsonfile")

FORMAT = 2
"""The newest layout this code reads and writes."""
FORMAT_FILE = "format"
_LOCK = "migrate.lock"
_MIGRATED = "migrated"  # the session named by reservations made by an upgrade: never live


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
        version = json.loads(data)["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(version)
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"job store {root}: its format file is damaged ({data[:60]!r})") from exc
    return version


def ensure_format(root: str, files: Files) -> None:
    """Check the store's format and upgrade an older store; see the module doc.

    Args:
        root: the store's root (its subdirectories already exist).
        files: the store's file writer (its ``fsync`` setting is not used:
            an upgrade is always made durable).

    Raises:
        StorageError: the store is newer than this code, or the upgrade failed.
    """
    version = read_format(root)
    if version == FORMAT:
        return
    _refuse_newer(root, version)
    locks = LockHolder()
    lock = os.path.join(root, _LOCK)
    try:
        locks.acquire(lock, wait=60.0)
    except (TimeoutError, OSError) as exc:
        raise StorageError(f"job store {root}: cannot take {_LOCK} to upgrade it: {exc}") from exc
    try:
        version = read_format(root)
        if version == FORMAT:
            return
        _refuse_newer(root, version)
        try:
            fresh = not _names(os.path.join(root, "q")) and not _names(
                os.path.join(root, "running")
            )
            if not fresh:
                logger.warning(
                    "upgrading the job store %s from format %d to %d", root, version, FORMAT
                )
            reserved = _reserve_all(root, files)
            fs.fsync_dir(os.path.join(root, "ids"))
            _write_format(root, files)
        except OSError as exc:
            raise StorageError(
                f"job store {root}: upgrade to format {FORMAT} failed: {exc}"
            ) from exc
        if not fresh:
            logger.info("job store %s upgraded: %d job ids reserved", root, reserved)
    finally:
        locks.release(lock, unlink=False)


def _refuse_newer(root: str, version: int) -> None:
    if version > FORMAT:
        raise StorageError(
            f"job store {root} has format version {version}, but this backrun reads "
            f"versions up to {FORMAT}: upgrade backrun to open it"
        )


def _reserve_all(root: str, files: Files) -> int:
    ids = os.path.join(root, "ids")
    with contextlib.suppress(FileExistsError):
        fs.mkdir(ids)
    tmp = files.write_tmp(f"{_MIGRATED}~{secrets.token_hex(8)}".encode(), sync=False)
    reserved = 0
    try:
        for job_id in sorted(set(_job_ids(root))):
            try:
                fs.link(tmp, os.path.join(ids, job_id))
                reserved += 1
            except FileExistsError:
                continue
    finally:
        files.discard(tmp)
    return reserved


def _write_format(root: str, files: Files) -> None:
    data = json.dumps({"version": FORMAT}).encode() + b"\n"
    tmp = os.path.join(files.tmp, secrets.token_hex(12) + ".tmp")
    fd = fs.open_new(tmp)
    try:
        fs.write_all(fd, data, tmp)
        fs.fsync(fd, tmp)
    finally:
        fs.close(fd, tmp)
    try:
        fs.rename(tmp, os.path.join(root, FORMAT_FILE))
    except OSError:
        files.discard(tmp)
        raise
    fs.fsync_dir(root)


def _names(directory: str) -> list[str]:
    try:
        return fs.listdir(directory)
    except FileNotFoundError:
        return []


def _job_ids(root: str) -> Iterator[str]:
    """The id of every job in the store, from names alone (a grabbed name counts)."""
    for name in _names(os.path.join(root, "running")):
        yield from _id_of(name)
    queues = os.path.join(root, "q")
    for qenc in _names(queues):
        waiting = [os.path.join(queues, qenc, "ready")]
        later = os.path.join(queues, qenc, "later")
        waiting += [os.path.join(later, bucket) for bucket in _names(later)]
        for directory in waiting:
            for name in _names(directory):
                yield from _id_of(name)
        for sub in FINISHED_DIRS.values():
            for name in _names(os.path.join(queues, qenc, sub)):
                yield from _id_of(name)
    tmp = os.path.join(root, "tmp")
    for name in _names(tmp):
        if name.endswith(".commit"):
            for relative in _manifest(os.path.join(tmp, name)):
                yield from _id_of(relative.rsplit("/", 1)[-1])


def _manifest(batch: str) -> list[str]:
    try:
        manifest = json.loads(fs.read_file(os.path.join(batch, "manifest")))
    except (OSError, ValueError):
        return []
    return [m for m in manifest if isinstance(m, str)] if isinstance(manifest, list) else []


def _id_of(name: str) -> Iterator[str]:
    grabbed = parse_grab(name)
    if grabbed is not None:
        name = grabbed[0]
    for parse in (parse_ready, parse_running):
        parsed = parse(name)
        if parsed is not None:
            yield parsed.job_id
            return
    stem = name[: -len(".json")] if name.endswith(".json") else ""
    if len(stem) == 32 and all(c in "0123456789abcdef" for c in stem):
        yield stem
