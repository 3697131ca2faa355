"""Real processes for the CLI, framework and example tests: start, read, wait, signal.

Every wait has a deadline and waits on a condition (a line printed, a
predicate true), never on a bare sleep.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: backrun importable, unbuffered, no colour."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("BACKRUN_APP", None)
    env.pop("BACKRUN_DIR", None)
    env.update(extra or {})
    return env


def run(
    args: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    **kwargs: object,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; capture stdout and (unless redirected) stderr as text."""
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=child_env(env),
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def backrun(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m backrun ARGS`` in ``cwd``."""
    return run([sys.executable, "-m", "backrun", *args], cwd=cwd, env=env)


class Proc:
    """A long-running child (a worker) whose merged output is collected line by line."""

    def __init__(
        self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.popen = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=child_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, *, timeout: float = 15.0) -> str:
        """Block until a line matches ``pattern`` (a regex); return it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self.popen.poll() is not None and not self._reader.is_alive()
                ):
                    raise AssertionError(
                        f"no line matching {pattern!r} (exit {self.popen.poll()}); "
                        f"output so far:\n{self.output_unlocked()}"
                    )
                self._changed.wait(min(remaining, 0.2))

    def output_unlocked(self) -> str:
        return "\n".join(self.lines)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for exit; return the exit code (the output is complete afterwards)."""
        code = self.popen.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)
        self._reader.join(timeout=5)
