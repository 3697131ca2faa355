"""A/B drain rate of the JSON store when the draining store enqueued the jobs itself.

As ``json_drain_ab.py`` (one child per tree, alternating order), but the jobs
are enqueued (``fsync=True``) through the same Engine and store that then
drains them with 4 threads, as ``compare.py``'s drain phase does: the store
knows the records it wrote, so its claims need not read them back.

Usage: python benchmarks/json_drain_own_ab.py --other /work/main [--rounds 3] [--jobs 3000]
"""

from __future__ import annotations

from json_drain_ab import main

_CHILD = """
import shutil, sys, tempfile, time
import backrun
from pydantic import BaseModel
from backrun.storage.jsonfile import JsonFileStorage

jobs = int(sys.argv[1])
root = tempfile.mkdtemp(dir=sys.argv[2])
engine = backrun.Engine(JsonFileStorage(root + "/s", fsync=True), threads=4)

class Empty(BaseModel):
    pass

@engine.handler(name="noop")
def noop(payload: Empty) -> None:
    return None

for _ in range(jobs):
    engine.enqueue(noop, {})
started = time.perf_counter()
ran = engine.run_until_idle(timeout=600)
elapsed = time.perf_counter() - started
assert ran == jobs, (ran, jobs)
engine.close()
shutil.rmtree(root)
print(jobs / elapsed)
"""


if __name__ == "__main__":
    main(_CHILD, __doc__ or "")
