"""backrun.locking: a hot lock is taken at once when free, waited for when held."""

from __future__ import annotations

import threading

import pytest

from backrun import locking


def test_a_free_lock_is_taken() -> None:
    lock = threading.Lock()
    locking.acquire(lock)
    assert lock.locked()
    lock.release()


@pytest.mark.parametrize(
    "patience",
    [locking.PATIENCE, 0.0],  # backing off; blocking at the first miss (a long holder)
    ids=["backing-off", "blocking"],
)
def test_a_held_lock_is_taken_once_its_holder_lets_go(
    patience: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(locking, "PATIENCE", patience)
    lock = threading.Lock()
    lock.acquire()
    taken = threading.Event()

    def waiter() -> None:
        locking.acquire(lock)
        taken.set()
        lock.release()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert not taken.wait(0.05)
    lock.release()
    assert taken.wait(5)
    thread.join(5)


def test_threads_sharing_a_lock_lose_no_update() -> None:
    lock = threading.Lock()
    counter = [0]

    def work() -> None:
        for _ in range(2000):
            locking.acquire(lock)
            try:
                value = counter[0]
                counter[0] = value + 1
            finally:
                lock.release()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert counter[0] == 8000
