"""The JSON store's own side of limits and unique keys: hashed names, crashes mid-claim."""

from __future__ import annotations

import json
import os
from pathlib import Path

from backrun.limits import HandlerLimits, group_hash
from backrun.storage.jsonfile import JsonFileStorage
from tests.helpers import LEASE, T0, make_job

ONE = {"lim": HandlerLimits(max_concurrency=1)}


def store(tmp_path: Path) -> JsonFileStorage:
    return JsonFileStorage(tmp_path / "store", fsync=False)


def claim(storage: JsonFileStorage) -> list[str]:
    got = storage.claim_limited(
        queues=None, limit=1, now=T0, worker_id="w-test", lease=LEASE, limits=ONE
    )
    return [job.id for job in got.jobs]


def test_no_raw_key_reaches_a_file_name(tmp_path: Path) -> None:
    storage = store(tmp_path)
    hostile = "../../etc/passwd"
    storage.add_unique([make_job(handler="lim", unique_key=hostile)], now=T0)
    storage.add_many([make_job(handler="lim", limited=True, concurrency_key=hostile)])
    assert claim(storage)
    names = [name for _, dirs, files in os.walk(tmp_path) for name in dirs + files]
    assert not [n for n in names if "passwd" in n or "etc" in n]
    storage.close()


def test_a_slot_left_by_a_claimer_that_died_before_its_rename_is_freed(tmp_path: Path) -> None:
    storage = store(tmp_path)
    job = make_job(handler="lim", limited=True)
    storage.add_many([job])
    slots = tmp_path / "store" / "limits" / "slots" / group_hash("group", "lim", None)
    slots.mkdir(parents=True)
    ghost = slots / f"{make_job().id}~{'ab' * 8}"
    ghost.touch()
    assert claim(storage) == [job.id]
    assert not ghost.exists()
    assert len(os.listdir(slots)) == 1  # the new claim's slot
    storage.close()


def test_a_finish_removes_its_slot_file(tmp_path: Path) -> None:
    storage = store(tmp_path)
    storage.add_many([make_job(handler="lim", limited=True)])
    (job_id,) = claim(storage)
    running = storage.get(job_id)
    assert running is not None
    slots = tmp_path / "store" / "limits" / "slots" / group_hash("group", "lim", None)
    assert len(os.listdir(slots)) == 1
    storage.update(running.replace(state=running.state.SUCCEEDED, finished_at=T0))
    assert os.listdir(slots) == []
    storage.close()


def test_a_key_record_naming_a_job_never_added_frees_the_key(tmp_path: Path) -> None:
    storage = store(tmp_path)
    first = make_job(handler="h", unique_key="k")
    storage.add_unique([first], now=T0)
    keys = tmp_path / "store" / "unique" / "keys"
    (record,) = keys.iterdir()
    # What a creator killed after writing its key record but before adding its job leaves:
    record.write_text(json.dumps({"job": make_job().id, "until": None}))
    again = make_job(handler="h", unique_key="k")
    assert storage.add_unique([again], now=T0) == [again]
    storage.close()


def test_maintain_forgets_the_records_of_free_keys(tmp_path: Path) -> None:
    storage = store(tmp_path)
    job = make_job(handler="h", unique_key="k")
    storage.add_unique([job], now=T0)
    keys = tmp_path / "store" / "unique" / "keys"
    storage.maintain(now=T0)
    assert len(list(keys.iterdir())) == 1  # still held: the job waits
    storage.cancel(job.id, now=T0)
    storage.unique._last_key_sweep = None
    storage.maintain(now=T0)
    assert list(keys.iterdir()) == []
    storage.close()


def test_held_jobs_filling_the_ready_window_do_not_hold_up_the_jobs_behind_them(
    tmp_path: Path,
) -> None:
    storage = JsonFileStorage(tmp_path / "store", fsync=False, ready_window=2)
    first = make_job(handler="lim", limited=True, priority=5)
    held = [make_job(handler="lim", limited=True, priority=5) for _ in range(6)]
    free = make_job(priority=0)
    storage.add_many([first, *held, free])
    fresh = JsonFileStorage(tmp_path / "store", fsync=False, ready_window=2)  # knows no names
    try:
        assert claim(fresh) == [first.id]  # takes the only slot
        assert claim(fresh) == [free.id]  # six held jobs fill the window three times over
        assert claim(fresh) == []
        counts = fresh.counts()
        assert counts[("default", first.state)] == 6  # the held ones are all still waiting
    finally:
        fresh.close()
        storage.close()
