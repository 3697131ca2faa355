"""``--processes N``: a parent that runs N child workers, restarts them, and stops them.

The parent holds no jobs and never claims: it checks the store once (exit 3
if unavailable), prints the banner, then starts each child as a fresh
interpreter running the same front end (``backrun worker``, ``manage.py
backrun_worker``, ``flask backrun worker``) with ``--threads M``. A child's
jobs, if it dies, are rescued by the other workers' orphan scan.

Restart rule: a child that exits before it reported ``ready`` failed to
start; it is restarted after 0.5 s, 1 s, 2 s, 4 s (doubling, at most 30 s),
and after :data:`MAX_START_FAILURES` failures in a row the parent drains the
others and exits 1 (a broken deploy must not spin). A child that was ready
and then died (a crash, SIGKILL, the OOM killer) is restarted at once.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any

from ._child import FD_ENV, INDEX_ENV
from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError
from ._process_options import child_command

__all__ = ["MAX_START_FAILURES", "ProcessPool", "describe_exit"]

MAX_START_FAILURES = 5
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 30.0
_KILL_GRACE = 10.0  # beyond --shutdown-timeout, before a child that will not stop is killed
_TICK = 0.5


def describe_exit(code: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL`` for a ``Popen.returncode``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class _Child:
    index: int
    popen: subprocess.Popen[bytes]
    sock: socket.socket
    started: float
    ready: bool = False
    worker_id: str = ""
    asked: bool = False  # the parent asked it to stop
    recycle: str = ""  # why it is being replaced, if it said so
    buffer: bytes = b""
    open: bool = True


@dataclass
class _Slot:
    child: _Child | None = None
    failures: int = 0
    restart_at: float = 0.0


@dataclass
class ProcessPool:
    """Starts, watches and stops the child workers. Run it with :meth:`run` in the main thread.

    Args:
        command: how to start one worker of this front end (the child's
            options are appended).
        processes: how many children.
        threads: each child's slots.
        options: the worker options (shutdown timeout, caps, queues...).
        out: where the parent's lines go.
        env: extra environment for every child (the metrics directory).
        on_exit: called with each child's pid once it has exited.
        on_worker_lost: called with the worker id of a child that did not exit
            cleanly, so its jobs become orphans at once (the parent unregisters it in the store).
        reload_root: the directory whose changed files :meth:`request_reload` names.
    """

    command: Sequence[str]
    processes: int
    threads: int
    options: Any
    out: IO[str]
    env: Mapping[str, str] = field(default_factory=dict)
    on_exit: Callable[[int], None] | None = None
    on_worker_lost: Callable[[str], None] | None = None
    reload_root: str | None = None
    shutdown_timeout: float = 30.0
    slots: list[_Slot] = field(init=False)
    children: list[_Child] = field(init=False)
    sigints: int = field(default=0, init=False)
    stopping: bool = field(default=False, init=False)
    forced: bool = field(default=False, init=False)
    gave_up: bool = field(default=False, init=False)
    unclean: int = field(default=0, init=False)
    restarts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.slots = [_Slot() for _ in range(self.processes)]
        self.children = []  # every live child, including replaced ones finishing their jobs
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._signals: list[int] = []
        self._reload_paths: list[str] = []
        self._reloading = False
        self._kill_at: float | None = None

    # -- output -----------------------------------------------------------

    def say(self, text: str) -> None:
        """One ``backrun:`` line on the parent's stream."""
        try:
            self.out.write(f"backrun: {text}\n")
            self.out.flush()
        except (OSError, ValueError):
            pass

    # -- children ---------------------------------------------------------

    def _spawn(self, index: int) -> None:
        parent_end, child_end = socket.socketpair()
        env = dict(os.environ)
        env.update(self.env)
        env[FD_ENV] = str(child_end.fileno())
        env[INDEX_ENV] = str(index)
        argv = child_command(self.command, self.options, self.threads)
        try:
            popen = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(child_end.fileno(),),
                # Its own process group: a terminal's Ctrl+C reaches the parent only,
                # which passes it on once (a second one would force the child).
                process_group=0,
            )
        except OSError as exc:
            parent_end.close()
            child_end.close()
            raise CliError(f"cannot start a worker process ({argv[0]}): {exc}", EXIT_USAGE) from exc
        child_end.close()
        parent_end.setblocking(False)
        child = _Child(index, popen, parent_end, time.monotonic())
        self._selector.register(parent_end, selectors.EVENT_READ, child)
        self.slots[index].child = child
        self.children.append(child)

    def _tell(self, child: _Child, command: str) -> None:
        # A child that closed its end is exiting already: nothing to tell it.
        if child.open:
            with contextlib.suppress(OSError):
                child.sock.send(command.encode() + b"\n")

    def _read(self, child: _Child) -> bool:
        """Handle what the child said; False once nothing more is waiting."""
        try:
            data = child.sock.recv(4096)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._close_socket(child)
            return False
        child.buffer += data
        while b"\n" in child.buffer:
            raw, _, child.buffer = child.buffer.partition(b"\n")
            line = raw.decode("ascii", "replace").strip()
            if line.startswith("ready"):
                child.ready = True
                child.worker_id = line.removeprefix("ready").strip()
                self.slots[child.index].failures = 0
            elif line.startswith("recycle ") and not child.recycle:
                child.recycle = line.removeprefix("recycle ")
                self.say(
                    f"child {child.index} (pid {child.popen.pid}) is replaced: "
                    f"{child.recycle}; it finishes its running jobs first"
                )
                slot = self.slots[child.index]
                if slot.child is child and not child.asked:
                    # The replacement starts now, so the pool never runs short a process.
                    self.restarts += 1
                    slot.child = None
                    slot.restart_at = time.monotonic()
        return True

    def _close_socket(self, child: _Child) -> None:
        if child.open:
            child.open = False
            self._selector.unregister(child.sock)
            child.sock.close()

    def _reap(self, now: float) -> None:
        for child in list(self.children):
            code = child.popen.poll()
            if code is None:
                continue
            # Its last words ("ready", "recycle") may still be unread.
            while child.open and self._read(child):
                pass
            self._close_socket(child)
            self.children.remove(child)
            slot = self.slots[child.index]
            current = slot.child is child
            if current:
                slot.child = None
            if self.on_exit is not None:
                self.on_exit(child.popen.pid)
            if code != EXIT_OK and child.worker_id and self.on_worker_lost is not None:
                self.on_worker_lost(child.worker_id)
            if current:
                self._exited(child.index, slot, child, code, now)
            elif code != EXIT_OK:
                self.say(f"replaced child (pid {child.popen.pid}) ended with {describe_exit(code)}")
                self.unclean += int(self.stopping)

    def _exited(self, index: int, slot: _Slot, child: _Child, code: int, now: float) -> None:
        pid, how = child.popen.pid, describe_exit(code)
        if child.asked or self.stopping:
            if code != EXIT_OK and self.stopping:
                self.unclean += 1
            return
        if not child.ready:
            slot.failures += 1
            if slot.failures >= MAX_START_FAILURES:
                self.say(
                    f"child {index} failed to start {slot.failures} times in a row "
                    f"(last: {how}); giving up"
                )
                self.gave_up = True
                self._stop("drain")
                return
            delay = min(_BACKOFF_FIRST * 2 ** (slot.failures - 1), _BACKOFF_MAX)
            self.say(
                f"child {index} (pid {pid}) exited before it was ready ({how}); "
                f"restarting in {delay:g}s ({slot.failures}/{MAX_START_FAILURES})"
            )
            slot.restart_at = now + delay
            return
        self.restarts += 1
        lived = now - child.started
        verb = "exited" if code == EXIT_OK else "died"
        self.say(f"child {index} (pid {pid}) {verb} ({how}) after {lived:.1f}s; restarting it")
        slot.restart_at = now

    def _start_due(self, now: float) -> None:
        if self.stopping or self._reloading:
            return
        for index, slot in enumerate(self.slots):
            if slot.child is None and slot.restart_at <= now:
                self._spawn(index)

    # -- stopping and reloading -------------------------------------------

    def _stop(self, command: str) -> None:
        self.stopping = True
        if self._kill_at is None:
            self._kill_at = time.monotonic() + self.shutdown_timeout + _KILL_GRACE
        for child in self.children:
            child.asked = True
            self._tell(child, command)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)  # handled by the loop; only a flag here

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            name = signal.Signals(signum).name
            if signum == signal.SIGINT:
                self.sigints += 1
            running = len(self.children)
            if self.sigints >= 2 and signum == signal.SIGINT:
                if not self.forced:
                    self.forced = True
                    self.say(f"{name} again: forcing {running} child process(es) to release jobs")
                    self._stop("force")
            elif not self.stopping:
                self.say(
                    f"{name} received: draining {running} child process(es) (Ctrl+C again to force)"
                )
                self._stop("drain")

    def request_reload(self, paths: Sequence[str]) -> None:
        """Drain and restart every child (``paths`` changed). Safe from any thread."""
        self._reload_paths.extend(sorted(paths))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"r")

    def _handle_reload(self) -> None:
        if self._reload_paths and not self.stopping and not self._reloading:
            changed = os.path.relpath(self._reload_paths[0], self.reload_root or ".")
            more = len(set(self._reload_paths)) - 1
            self._reload_paths.clear()
            self.say(
                f"reloading: {changed}{f' and {more} more' if more > 0 else ''} changed; "
                "draining the running jobs first"
            )
            self._reloading = True
            for child in self.children:
                child.asked = True
                self._tell(child, "drain")
        if self._reloading and not self.children:
            self._reloading = False
            self._reload_paths.clear()
            for slot in self.slots:
                slot.restart_at = 0.0
                slot.failures = 0
            self.say(f"reloaded: starting {self.processes} child process(es)")

    # -- the loop ---------------------------------------------------------

    def run(self) -> int:
        """Start the children and supervise them until stopped; return the exit code."""
        previous: dict[int, Any] = {}
        in_main = threading.current_thread() is threading.main_thread()
        old_wakeup = -1
        if in_main:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
            old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        try:
            self._loop()
        finally:
            if in_main:
                signal.set_wakeup_fd(old_wakeup)
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
            for child in self.children:  # only after an error in the loop itself
                child.popen.kill()
                child.popen.wait()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()
        if self.gave_up or self.forced or self.unclean:
            return EXIT_FAILED
        return EXIT_OK

    def _loop(self) -> None:
        self._start_due(time.monotonic())
        while True:
            now = time.monotonic()
            if self.stopping and not self.children:
                return
            timeout = _TICK
            pending = [s.restart_at for s in self.slots if s.child is None]
            if pending and not self.stopping:
                timeout = max(0.0, min(timeout, min(pending) - now))
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    try:
                        while self._wake_r.recv(512):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                else:
                    self._read(key.data)
            self._handle_signals()
            now = time.monotonic()
            self._reap(now)
            self._handle_reload()
            if self.stopping and self._kill_at is not None and now > self._kill_at:
                self._kill_stragglers()
            self._start_due(now)

    def _kill_stragglers(self) -> None:
        for child in self.children:
            if child.popen.poll() is None:
                self.say(f"child {child.index} (pid {child.popen.pid}) did not stop: killing it")
                child.popen.kill()
        self.forced = True
        self._kill_at = None
