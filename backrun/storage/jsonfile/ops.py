"""Operator state in the JSON store: live workers' records and paused queues.

Kept under ``ops/``, away from the directories the store's upkeep sweeps:

- ``ops/workers/<worker id>.json``: the latest :class:`WorkerInfo` of a
  worker, replaced by rename. It counts only while the worker's lock in
  ``workers/`` is held, so a killed worker disappears at once; its record is
  deleted by the next reader.
- ``ops/paused/<encoded queue>``: an empty file per paused queue. Claims
  re-read the directory whenever its mtime moves, so a pause made by another
  process holds from its next claim.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import orjson

from backrun.errors import StorageError
from backrun.storage import fs
from backrun.workerinfo import WorkerInfo

from .core import storage_errors
from .layout import check_worker_id, decode_queue, encode_queue
from .locks import is_free

if TYPE_CHECKING:
    from .core import StoreContext

__all__ = ["Ops"]

_MAX_RECORD_BYTES = 1 << 20


class Ops:
    """Worker records and paused queues for :class:`JsonFileStorage`."""

    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx
        self._paused_cache: tuple[int, frozenset[str]] | None = None
        self._paused_lock = threading.Lock()

    def _ops_dir(self, name: str) -> str:
        ops = os.path.join(self.ctx.root, "ops")
        path = os.path.join(ops, name)
        for directory in (ops, path):
            with contextlib.suppress(FileExistsError):
                fs.mkdir(directory)
        return path

    # -- workers ------------------------------------------------------------------

    def publish_worker(self, info: WorkerInfo, *, ttl: timedelta) -> None:
        """Replace the worker's record; see :meth:`Storage.publish_worker`."""
        name = check_worker_id(info.id) + ".json"
        with storage_errors("publish_worker"):
            directory = self._ops_dir("workers")
            tmp = self.ctx.files.write_tmp(orjson.dumps(info.to_dict()), sync=False)
            try:
                fs.rename(tmp, os.path.join(directory, name))
            except OSError:
                self.ctx.files.discard(tmp)
                raise

    def live_workers(self, *, now: datetime) -> list[WorkerInfo]:
        """Records of workers whose lock is held; see :meth:`Storage.live_workers`."""
        found: list[WorkerInfo] = []
        with storage_errors("live_workers"):
            directory = self._ops_dir("workers")
            for name in sorted(fs.listdir(directory)):
                path = os.path.join(directory, name)
                worker_id = name.removesuffix(".json")
                if not name.endswith(".json") or is_free(
                    os.path.join(self.ctx.workers_dir, worker_id + ".lock")
                ):
                    self.ctx.files.discard(path)
                    continue
                try:
                    data = fs.read_file(path)
                    if len(data) > _MAX_RECORD_BYTES:
                        raise ValueError("record too large")
                    info = WorkerInfo.from_dict(orjson.loads(data))
                except FileNotFoundError:
                    continue  # it stopped just now
                except ValueError:
                    continue  # half-written by hand or by an older version: not ours to show
                if info.id == worker_id:
                    found.append(info)
        return found

    # -- paused queues ------------------------------------------------------------

    def pause_queue(self, queue: str, *, now: datetime) -> bool:
        """Mark ``queue`` paused; see :meth:`Storage.pause_queue`."""
        with storage_errors("pause_queue"):
            path = os.path.join(self._ops_dir("paused"), encode_queue(queue))
            try:
                fd = fs.open_new(path)
            except FileExistsError:
                return False
            fs.close(fd, path)
            self.ctx.files.sync_dir(os.path.dirname(path))
        return True

    def resume_queue(self, queue: str) -> bool:
        """Clear ``queue``'s pause; see :meth:`Storage.resume_queue`."""
        with storage_errors("resume_queue"):
            path = os.path.join(self._ops_dir("paused"), encode_queue(queue))
            try:
                fs.unlink(path)
            except FileNotFoundError:
                return False
            self.ctx.files.sync_dir(os.path.dirname(path))
            # Touch the queue's ready directory: other processes' watchers wake their workers.
            with contextlib.suppress(FileNotFoundError):
                ready = os.path.join(self.ctx.queues_dir, encode_queue(queue), "ready")
                fs.utime(ready, time.time_ns())
        return True

    def paused_queues(self) -> frozenset[str]:
        """The paused queues; see :meth:`Storage.paused_queues`."""
        with storage_errors("paused_queues"):
            return frozenset(decode_queue(n) for n in self._paused_encoded())

    def _paused_encoded(self) -> frozenset[str]:
        directory = os.path.join(self.ctx.root, "ops", "paused")
        try:
            mtime = fs.stat(directory).st_mtime_ns
        except FileNotFoundError:
            return frozenset()
        cached = self._paused_cache
        if cached is not None and cached[0] == mtime and time.time_ns() - mtime > 50_000_000:
            return cached[1]
        names = frozenset(fs.listdir(directory))
        with self._paused_lock:
            self._paused_cache = (mtime, names)
        return names

    def claimable(self, qencs: Collection[str]) -> list[str]:
        """``qencs`` (encoded queue names) without the paused ones."""
        try:
            paused = self._paused_encoded()
        except OSError as exc:
            raise StorageError(f"cannot read the paused queues: {exc}") from exc
        return [q for q in qencs if q not in paused]
