"""A worker process for the signal tests: one job that runs until a file appears.

Usage: signal_worker.py WORKDIR. Prints "started" when the job starts, and, once
run_forever returns, a JSON line with its result and the job's final record.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from pydantic import BaseModel

import backrun


class Wait(BaseModel):
    marker: str


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    workdir = Path(sys.argv[1])
    engine = backrun.Engine(backrun.MemoryStorage(), middleware=[], shutdown_timeout=20)

    @engine.handler(name="wait_for_marker")
    def wait_for_marker(payload: Wait) -> None:
        print("started", flush=True)
        deadline = time.monotonic() + 20
        while not Path(payload.marker).exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    job = engine.enqueue(wait_for_marker, {"marker": str(workdir / "go")})
    drained = engine.run_forever()
    final = engine.get(job.id)
    assert final is not None
    print(json.dumps({"drained": drained, "state": final.state.value, "attempts": final.attempts}))


if __name__ == "__main__":
    main()
