"""Group commit: producers arriving during a directory sync share the next one."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage
from backrun.storage.jsonfile.sync import GroupSync, group_sync
from backrun.testing import wait_until
from tests.storage.factories import make_job


class HeldSyncs:
    """An fs hook that holds the first directory sync until released, and counts them."""

    def __init__(self, fail_after_first: bool = False) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.syncs: list[str] = []
        self.fail_after_first = fail_after_first
        self._lock = threading.Lock()

    def __call__(self, operation: str, path: str) -> None:
        if operation != "fsync_dir":
            return
        with self._lock:
            self.syncs.append(path)
            first = len(self.syncs) == 1
        if first:
            self.entered.set()
            assert self.release.wait(30)
        elif self.fail_after_first:
            raise OSError(errno.EIO, "injected", path)


def waiting(sync: GroupSync) -> int:
    return len(sync._cond._waiters)  # type: ignore[attr-defined]


def run_followers(sync: GroupSync, path: str, hook: HeldSyncs, n: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def call() -> None:
        try:
            sync.sync(path)
        except OSError as exc:
            errors.append(exc)

    previous = fs.set_hook(hook)
    try:
        leader = threading.Thread(target=call)
        leader.start()
        assert hook.entered.wait(10)
        followers = [threading.Thread(target=call) for _ in range(n)]
        for thread in followers:
            thread.start()
        wait_until(lambda: waiting(sync) == n, timeout=10, message="followers waiting")
        hook.release.set()
        for thread in [leader, *followers]:
            thread.join(10)
    finally:
        fs.set_hook(previous)
    return errors


def test_callers_arriving_during_a_sync_share_the_next_one(tmp_path: Path) -> None:
    sync, hook = GroupSync(), HeldSyncs()
    errors = run_followers(sync, str(tmp_path), hook, 7)
    assert errors == []
    assert hook.syncs == [str(tmp_path)] * 2  # 8 callers, 2 syncs
    assert sync.syncs == 2


def test_a_failed_shared_sync_fails_every_caller_counting_on_it(tmp_path: Path) -> None:
    sync, hook = GroupSync(), HeldSyncs(fail_after_first=True)
    errors = run_followers(sync, str(tmp_path), hook, 5)
    assert len(errors) == 5  # the leader's own sync succeeded
    assert all(isinstance(e, OSError) for e in errors)
    sync.sync(str(tmp_path))  # the directory is usable again (the hook is gone)


def test_a_lone_caller_syncs_once_per_call(tmp_path: Path) -> None:
    sync = GroupSync()
    calls = fs.Faults()
    with calls.installed():
        for _ in range(3):
            sync.sync(str(tmp_path))
    assert [op for op, _ in calls.log] == ["fsync_dir"] * 3


def test_concurrent_durable_enqueues_share_ready_syncs(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=True)
    store.add(make_job())  # queue directories made
    ready = str(tmp_path / "s" / "q" / "default" / "ready")
    hook = HeldSyncs()
    errors: list[BaseException] = []

    def add() -> None:
        try:
            store.add(make_job())
        except BaseException as exc:  # reported below
            errors.append(exc)

    previous = fs.set_hook(hook)
    try:
        first = threading.Thread(target=add)
        first.start()
        assert hook.entered.wait(10)
        assert hook.syncs == [ready]
        others = [threading.Thread(target=add) for _ in range(7)]
        for thread in others:
            thread.start()
        wait_until(lambda: waiting(group_sync) >= 7, timeout=10, message="producers waiting")
        hook.release.set()
        for thread in [first, *others]:
            thread.join(10)
    finally:
        fs.set_hook(previous)
    assert errors == []
    assert hook.syncs.count(ready) == 2  # 8 producers, 2 syncs of ready/
    assert len(os.listdir(ready)) == 9
    store.close()


@pytest.mark.parametrize("n", [1, 8])
def test_enqueues_return_only_after_their_directory_was_synced(tmp_path: Path, n: int) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=True)
    store.add(make_job())
    order: list[tuple[str, str]] = []
    lock = threading.Lock()

    def record(operation: str, path: str) -> None:
        if operation in ("link", "fsync_dir"):
            with lock:
                order.append((operation, path))

    previous = fs.set_hook(record)
    try:
        threads = [threading.Thread(target=store.add, args=(make_job(),)) for _ in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        fs.set_hook(previous)
    ready = str(tmp_path / "s" / "q" / "default" / "ready")
    last_link = max(i for i, (op, p) in enumerate(order) if op == "link" and p.startswith(ready))
    assert any(op == "fsync_dir" and p == ready for op, p in order[last_link:])
    store.close()
