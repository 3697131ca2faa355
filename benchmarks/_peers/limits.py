"""The machine's limits, measured like a trial (stdlib only, run in its own process).

* ``pool``: a bare ``ThreadPoolExecutor(4)`` running N no-op jobs that record
  into the same ledger as every system's handler (submit + run + wait);
* ``fsync --threads K``: durable small-file writes (write to a temporary
  file + fsync + ``os.replace`` + fsync of the directory) from K threads;
* ``rename``: ``os.rename`` of small files between two directories.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

from _common import MemoryLedger, emit

BODY = b'{"id":"0123456789abcdef","state":"queued","payload":{"t0":0.0}}' * 4


def pool(jobs: int) -> dict[str, float]:
    ledger = MemoryLedger()
    ledger.reset(jobs)
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as executor:
        wait([executor.submit(ledger.record, 0.0) for _ in range(jobs)])
    return {"drain": jobs / (time.perf_counter() - started)}


def durable_write(directory: str, name: str) -> None:
    tmp = os.path.join(directory, "tmp", name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, BODY)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(directory, "ready", name))
    dir_fd = os.open(os.path.join(directory, "ready"), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def fsync_writes(workdir: str, threads: int, jobs: int, cap: float) -> dict[str, float]:
    directory = tempfile.mkdtemp(prefix="fsync-", dir=workdir)
    os.mkdir(os.path.join(directory, "tmp"))
    os.mkdir(os.path.join(directory, "ready"))
    deadline = time.perf_counter() + cap
    counts = [0] * threads

    def writer(index: int) -> None:
        for n in range(jobs // threads):
            durable_write(directory, f"{index}-{n}")
            counts[index] = n + 1
            if time.perf_counter() > deadline:
                return

    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    shutil.rmtree(directory)
    return {"rate": sum(counts) / elapsed, "jobs": sum(counts)}


def renames(workdir: str, jobs: int) -> dict[str, float]:
    directory = tempfile.mkdtemp(prefix="rename-", dir=workdir)
    source, target = os.path.join(directory, "a"), os.path.join(directory, "b")
    os.mkdir(source)
    os.mkdir(target)
    for n in range(jobs):
        with open(os.path.join(source, str(n)), "wb") as file:
            file.write(BODY)
    started = time.perf_counter()
    for n in range(jobs):
        os.rename(os.path.join(source, str(n)), os.path.join(target, str(n)))
    elapsed = time.perf_counter() - started
    shutil.rmtree(directory)
    return {"rate": jobs / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("pool", "fsync", "rename"))
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cap", type=float, default=4.0)
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    args = parser.parse_args()
    if args.what == "pool":
        emit(pool(args.jobs))
    elif args.what == "fsync":
        emit(fsync_writes(args.workdir, args.threads, args.jobs, args.cap))
    else:
        emit(renames(args.workdir, args.jobs))


if __name__ == "__main__":
    main()
