"""The Engine's periodic-jobs methods: declaring, listing and removing schedules.

A mixin of :class:`backrun.engine.Engine`, kept apart so the engine module
stays one concept a section. The schedules live in memory only; the workers'
schedulers create each tick's job (see ``scheduler.py``).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from .clock import Clock
from .handlers import Handler, HandlerRegistry
from .schedules import Schedule, build_schedule
from .storage.base import Storage

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["PeriodicJobs"]


class PeriodicJobs:
    """``schedule``, ``unschedule``, ``schedule_list`` and ``schedules`` of an Engine."""

    registry: HandlerRegistry
    clock: Clock
    max_payload_bytes: int
    max_payload_depth: int
    _schedules: dict[str, Schedule]
    _workers: set[Worker]
    _workers_lock: threading.Lock
    storage: Storage

    def schedule(
        self,
        handler: type[Handler[Any]] | Callable[..., Any] | str,
        payload: object = None,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        name: str | None = None,
        tz: str | tzinfo = "UTC",
        queue: str | None = None,
        priority: int = 0,
        misfire: str = "once",
    ) -> Schedule:
        """Run ``handler`` periodically: one job per tick, created by whichever worker is up.

        Every worker process of this engine's store creates the due ticks'
        jobs; the store keeps each tick to one job (see "Periodic jobs" in the
        README). The payload is validated now.

        Args:
            handler: a registered Handler class, function, or handler name.
            payload: the payload of every tick's job (model or mapping).
            cron: a 5-field crontab (``"*/5 * * * *"``); 6 fields = seconds first.
            every: or a fixed interval (timedelta or seconds, at least 1 s).
            name: the schedule's stable name (default: the handler's name).
            tz: the zone cron fields are read in (name or tzinfo).
            queue: the jobs' queue (default: the handler's).
            priority: the jobs' priority.
            misfire: after downtime, ``"once"`` runs one catch-up tick, ``"skip"`` none.

        Raises:
            UnknownHandler: the handler is not registered.
            ValueError: a bad spec (the message names the field), or the name is taken.
            pydantic.ValidationError: the payload does not fit the handler's type.
        """
        schedule = build_schedule(
            self.registry.resolve(handler),
            payload,
            cron=cron,
            every=every,
            name=name,
            tz=tz,
            queue=queue,
            priority=priority,
            misfire=misfire,
            max_payload_bytes=self.max_payload_bytes,
            max_payload_depth=self.max_payload_depth,
        )
        with self._workers_lock:
            if schedule.name in self._schedules:
                raise ValueError(f"name: a schedule named {schedule.name!r} exists already")
            self._schedules[schedule.name] = schedule
            workers = list(self._workers)
        for worker in workers:
            worker.schedules_changed()
        return schedule

    def unschedule(self, name: str) -> None:
        """Stop a schedule: no tick after this call creates a job (jobs made stay).

        Raises:
            KeyError: no schedule has this name.
        """
        with self._workers_lock:
            del self._schedules[name]

    def schedule_list(self) -> list[Schedule]:
        """The declared schedules, as declared (without next or last tick)."""
        with self._workers_lock:
            return list(self._schedules.values())

    def schedules(self) -> list[Schedule]:
        """The schedules, by name, with ``next_run_at`` and ``last_tick_at`` filled in.

        ``last_tick_at`` is the latest tick whose job exists in the store
        (looking back 64 ticks), whichever process created it.
        """
        from .scheduler import last_tick_at

        now = self.clock.now()
        return [
            dataclasses.replace(
                s, next_run_at=s.next_tick(now), last_tick_at=last_tick_at(self.storage, s, now)
            )
            for s in sorted(self.schedule_list(), key=lambda s: s.name)
        ]
