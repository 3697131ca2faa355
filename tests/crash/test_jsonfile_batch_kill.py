"""A producer writing 1,000-job batches is killed with SIGKILL again and again.

Every batch must end all there or not there at all once a store has run
``maintain``, every batch the producer saw acknowledged must be all there,
and no job may be there twice.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from backrun.clock import utcnow
from backrun.storage.jsonfile import JsonFileStorage
from backrun.storage.jsonfile.layout import parse_ready, parse_running
from backrun.testing import wait_until

pytestmark = pytest.mark.slow

BATCH = 1000
ROUNDS = int(os.environ.get("BACKRUN_BATCH_KILL_ROUNDS", "8"))

PRODUCER = """
import sys
from datetime import UTC, datetime
from backrun.jobs import Job
from backrun.storage.jsonfile import JsonFileStorage

root, first = sys.argv[1], int(sys.argv[2])
store = JsonFileStorage(root, fsync=False)
now = datetime.now(UTC)
print("ready", flush=True)
number = first
while True:
    store.add_many([
        Job(id=f"{number:016x}{n:016x}", handler="h", payload={}, run_at=now, created_at=now)
        for n in range(BATCH_SIZE)
    ])
    print("acked", number, flush=True)
    number += 1
""".replace("BATCH_SIZE", str(BATCH))


def produce_and_kill(
    root: Path, first: int, out: Path, rng: random.Random, *, after: bytes = b"ready"
) -> None:
    """Start a producer numbering batches from ``first`` and SIGKILL it mid-work."""
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, str(root), str(first)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
    try:
        wait_until(lambda: after in out.read_bytes(), timeout=60, message="producer started")
        time.sleep(rng.uniform(0.02, 1.0))  # a random moment inside some batch
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def acknowledged(out: Path) -> set[int]:
    return {
        int(line.split()[1]) for line in out.read_text().splitlines() if line.startswith("acked ")
    }


def test_sigkilled_batch_producers_leave_whole_batches(tmp_path: Path) -> None:
    root = tmp_path / "store"
    JsonFileStorage(root, fsync=False).close()
    rng = random.Random(10)
    acked: set[int] = set()
    for round_ in range(ROUNDS):
        out = tmp_path / f"producer-{round_}.log"
        # The first producer is killed only after a first acknowledgement.
        after = b"acked" if round_ == 0 else b"ready"
        produce_and_kill(root, round_ * 1_000_000, out, rng, after=after)
        acked |= acknowledged(out)
    healer = JsonFileStorage(root, fsync=False, tmp_grace=timedelta(0))
    healer.maintain(now=utcnow())
    ids = job_ids(root)
    per_batch = Counter(int(job_id[:16], 16) for job_id in ids)
    partial = {b: n for b, n in per_batch.items() if n != BATCH}
    lost = {b for b in acked if per_batch[b] != BATCH}
    duplicates = len(ids) - len(set(ids))
    assert partial == {}
    assert lost == set()
    assert duplicates == 0
    assert acked  # the producers got far enough to be killed inside real work
    assert os.listdir(root / "tmp") == []
    healer.close()


def job_ids(root: Path) -> list[str]:
    ids = []
    for path in (root / "q").rglob("*.json"):
        parsed = parse_ready(path.name)
        ids.append(parsed.job_id if parsed is not None else path.name[:32])
    for name in os.listdir(root / "running"):
        running = parse_running(name)
        if running is not None:
            ids.append(running.job_id)
    return ids
