"""All-or-none batches for the JSON store: staged in ``tmp/``, committed by one rename.

:meth:`add_many` of several jobs writes every record into
``tmp/<session>~<token>.batch/`` as ``<n>.json``, with a ``manifest`` listing
where each goes, syncs that directory, then renames it to ``.commit``: that
one rename is the commit point. Each record is then renamed into its queue
directory (so it can be moved there only once) and the directory removed.

A batch whose store died is healed by :meth:`maintain` under the dead
session's lock: a committed one is finished (the records not yet moved are
moved), an uncommitted one deleted. So a kill at any point leaves all of the
batch or none of it, and a batch that was acknowledged is all there.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from backrun.storage import fs

from .layout import decode_queue, encode_queue, parse_ready

if TYPE_CHECKING:
    from .core import StoreContext


__all__ = ["Batches"]

logger = logging.getLogger("backrun.storage.jsonfile")

STAGED = ".batch"
COMMITTED = ".commit"
MANIFEST = "manifest"
_BATCH_THREADS = 8
_BATCH = re.compile(r"\A([0-9a-f]{16})~[0-9a-f]{16}\.(batch|commit)\Z")
_DEST = re.compile(r"\Aq/([^/]+)/(ready|later/\d{12})/([^/]+)\Z")


def batch_session(name: str) -> str | None:
    """The session that wrote the batch directory ``name`` in ``tmp/``; None if not one."""
    match = _BATCH.match(name)
    return None if match is None else match[1]


def _checked_dest(relative: str) -> tuple[str, str] | None:
    """(queue dir name, path relative to the root) if ``relative`` is a waiting job's place."""
    match = _DEST.match(relative)
    if match is None or parse_ready(match[3]) is None:
        return None
    qenc = match[1]
    try:
        if encode_queue(decode_queue(qenc)) != qenc:
            return None
    except ValueError:
        return None
    return qenc, relative


class Batches:
    """Staging, committing, publishing and healing batches of new jobs."""

    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    def write_batch(self, records: Sequence[bytes], places: Sequence[tuple[str, str]]) -> None:
        """Add the records at ``places`` (directory, name) all or none; see the module doc.

        Raises:
            OSError: the batch could not be committed; none of it is visible.
        """
        self.ctx.ensure_session()
        staged = os.path.join(
            self.ctx.files.tmp, f"{self.ctx.session}~{secrets.token_hex(8)}{STAGED}"
        )
        fs.mkdir(staged)
        try:
            self._stage(staged, records, places)
            committed = staged[: -len(STAGED)] + COMMITTED
            fs.rename(staged, committed)
        except Exception:
            self._discard_batch(staged)
            raise
        try:
            self.ctx.files.sync_dir(self.ctx.files.tmp)
            self.publish_batch(committed)
        except OSError as exc:
            # Committed: the batch is the caller's now. maintain() finishes it.
            logger.error("a committed batch is not all in place yet (maintain() retries): %s", exc)
            self.ctx.pending_batches.add(committed)

    def _stage(
        self, staged: str, records: Sequence[bytes], places: Sequence[tuple[str, str]]
    ) -> None:
        paths = [os.path.join(staged, f"{n:06d}.json") for n in range(len(records))]
        if len(records) > 1 and self.ctx.files.fsync:
            # Written and fsynced in parallel: concurrent fsyncs share journal commits.
            with ThreadPoolExecutor(min(_BATCH_THREADS, len(records))) as pool:
                futures = [
                    pool.submit(self.ctx.files.write_new, p, r, sync=True)
                    for p, r in zip(paths, records, strict=True)
                ]
                for future in futures:
                    future.result()
        else:
            for path, record in zip(paths, records, strict=True):
                self.ctx.files.write_new(path, record, sync=True)
        manifest = [
            os.path.relpath(os.path.join(directory, name), self.ctx.root).replace(os.sep, "/")
            for directory, name in places
        ]
        self.ctx.files.write_new(
            os.path.join(staged, MANIFEST), json.dumps(manifest).encode(), sync=True
        )
        self.ctx.files.sync_dir(staged)

    def publish_batch(self, committed: str) -> None:
        """Move every record of a committed batch not moved yet into place, then remove it."""
        try:
            manifest = json.loads(fs.read_file(os.path.join(committed, MANIFEST)))
        except FileNotFoundError:
            manifest = []  # removed last but the directory: every record is in place
        except ValueError as exc:
            self.ctx.files.quarantine(committed, f"unreadable batch manifest: {exc}")
            return
        touched: set[str] = set()
        for n, relative in enumerate(manifest if isinstance(manifest, list) else []):
            checked = _checked_dest(relative) if isinstance(relative, str) else None
            src = os.path.join(committed, f"{n:06d}.json")
            if checked is None:
                self.ctx.files.quarantine(
                    src, f"batch record with a bad destination {relative!r:.200}"
                )
                continue
            qenc, rel = checked
            dest = os.path.join(self.ctx.root, rel)
            directory, name = os.path.split(dest)
            self.ctx.ensure_queue(qenc)
            try:
                self.ctx.publish(src, directory, name)
            except FileNotFoundError:
                if _exists(src):
                    raise
                continue  # moved before a crash
            touched.add(directory)
            if os.path.basename(directory) == "ready":
                parsed = parse_ready(name)
                assert parsed is not None
                with self.ctx.mutex:
                    self.ctx.cache(qenc).add(parsed)
        for directory in sorted(touched):
            self.ctx.files.sync_dir(directory)
        self._discard_batch(committed)

    def _discard_batch(self, path: str) -> None:
        """Remove a batch directory and what is left in it (ignoring errors)."""
        try:
            names = fs.listdir(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("could not list batch directory %s: %s", path, exc)
            self.ctx.pending_batches.add(path)
            return
        for name in names:
            self.ctx.files.discard(os.path.join(path, name))
        try:
            fs.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not remove batch directory %s: %s", path, exc)
            self.ctx.pending_batches.add(path)

    def heal_batch(self, path: str) -> None:
        """Finish a committed batch, or drop an uncommitted one, that its writer left."""
        if path.endswith(COMMITTED):
            self.publish_batch(path)
        else:
            self._discard_batch(path)

    def batch_dirs(self) -> list[str]:
        """The names of the batch directories in ``tmp/``."""
        return [n for n in fs.listdir(self.ctx.files.tmp) if batch_session(n) is not None]


def _exists(path: str) -> bool:
    try:
        fs.lstat(path)
    except FileNotFoundError:
        return False
    return True
