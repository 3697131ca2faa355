"""Group commit: concurrent callers share the fsync of a directory.

One ``fsync`` of a directory makes durable every entry linked or renamed into
it before the call started. So a caller needs *a* sync that starts after its
own change, not a sync of its own: a caller arriving while a sync of the same
directory is in flight waits for it to end, then for the next one, which the
first of the waiters starts on behalf of all of them. Under load N
producers pay for about two syncs instead of N, as a database's write-ahead
log shares its log flush; a lone caller pays exactly one, as before.

A failed sync fails every caller that was counting on it, with the error.
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field

from backrun.storage import fs

__all__ = ["GroupSync", "group_sync"]


@dataclass(slots=True)
class _Directory:
    started: int = 0  # syncs started
    done: int = 0  # syncs ended (they end in order: one at a time)
    failed: dict[int, BaseException] = field(default_factory=dict)


class GroupSync:
    """Directory fsyncs shared by the threads of a process."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._dirs: dict[str, _Directory] = {}
        self.syncs = 0  # fsyncs actually made (for tests and benchmarks)

    def sync(self, path: str) -> None:
        """Return once a sync of ``path`` that started after this call has ended.

        Raises:
            OSError: that sync failed.
        """
        with self._cond:
            state = self._dirs.setdefault(path, _Directory())
            target = state.started + 1
            while state.done < target:
                if state.started == state.done:  # idle: lead the next sync
                    state.started += 1
                    break
                self._cond.wait()
            else:
                error = state.failed.get(target)
                if error is None:
                    return
                raise OSError(errno.EIO, f"directory sync failed: {error}", path) from error
            generation = state.started
        failure: BaseException | None = None
        try:
            fs.fsync_dir(path)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            with self._cond:
                self.syncs += 1
                state.done = generation
                if failure is not None:
                    state.failed[generation] = failure
                for old in [g for g in state.failed if g < generation - 64]:
                    del state.failed[old]
                self._cond.notify_all()


group_sync = GroupSync()
"""The process's shared instance (every store view of the process uses it)."""
