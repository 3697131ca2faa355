"""The Engine's enqueue methods: building, validating and storing new jobs.

A mixin of :class:`backrun.engine.Engine`, kept apart so the engine module
stays one concept a section: ``enqueue`` and ``enqueue_many`` build each job
(:func:`backrun.enqueueing.build_job`), pass it through the enqueue
middleware, write it (uniquely, in the caller's transaction, or plainly) and
wake this process's idle workers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .clock import Clock
from .enqueueing import build_job
from .followups import Next, build_followups
from .handlers import Handler, HandlerRegistry
from .jobs import Job, JobState
from .middleware import EnqueueNext, Middleware, compose_enqueue
from .retries import RetryPolicy
from .storage.base import Storage
from .uniqueness import add_unique, stamp

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["Enqueuing"]


class Enqueuing:
    """``enqueue`` and ``enqueue_many`` of an Engine, and the wake-ups they cause."""

    registry: HandlerRegistry
    clock: Clock
    storage: Storage
    middleware: list[Middleware]
    retry_policy: RetryPolicy
    max_payload_bytes: int
    max_payload_depth: int
    _enqueue_chain: EnqueueNext
    _workers: set[Worker]
    _workers_lock: threading.Lock

    def _build(
        self,
        handler: object,
        payload: object,
        delay: timedelta | float | None,
        at: datetime | None,
        queue: str | None,
        priority: int,
        headers: Mapping[str, str] | None,
        unique_key: str | None = None,
        unique_for: timedelta | float | None = None,
    ) -> Job:
        spec = self.registry.resolve(handler)
        job = build_job(
            spec,
            payload,
            now=self.clock.now(),
            delay=delay,
            at=at,
            queue=queue,
            priority=priority,
            headers=headers,
            default_policy=self.retry_policy,
            max_payload_bytes=self.max_payload_bytes,
            max_payload_depth=self.max_payload_depth,
        )
        if unique_key is None and unique_for is None and spec.limits is None:
            return job  # what stamp would return
        return stamp(job, spec, unique_key=unique_key, unique_for=unique_for)

    def _build_followup(
        self,
        handler: object,
        payload: object,
        *,
        delay: timedelta | float | None,
        queue: str | None,
        priority: int,
        headers: Mapping[str, str] | None,
    ) -> Job:
        return self._build(handler, payload, delay, None, queue, priority, headers)

    def _persist(self, job: Job) -> Job:
        if job.unique_key is not None:
            return add_unique(self.storage, [job], now=self.clock.now())[0]
        self.storage.add(job)
        return job

    def enqueue(
        self,
        handler: type[Handler[Any]] | Callable[..., Any] | str,
        payload: object = None,
        *,
        delay: timedelta | float | None = None,
        at: datetime | None = None,
        queue: str | None = None,
        priority: int = 0,
        headers: Mapping[str, str] | None = None,
        connection: Any = None,
        then: Sequence[Next] = (),
        unique_key: str | None = None,
        unique_for: timedelta | float | None = None,
    ) -> Job:
        """Validate a payload and store a new job; return it once it is durable.

        Thread-safe and blocking; from asyncio or trio, call it through
        ``asyncio.to_thread`` / ``trio.to_thread.run_sync``.

        Args:
            handler: a registered Handler class, function, or handler name.
            payload: the handler's payload model, or a mapping validated into it.
            delay: run no earlier than this long from now (timedelta or seconds).
            at: run no earlier than this aware datetime.
            queue: the queue (default: the handler's, else ``"default"``).
            priority: higher runs first among due jobs.
            headers: extra metadata stored with the job.
            connection: an open DB-API connection (psycopg, or Django's) whose
                transaction the job joins: it exists exactly when that
                transaction commits. Needs a store that supports it
                (:class:`PostgresStorage`).
            then: follow-up jobs (:class:`backrun.Next`), validated now, stored
                with this job and enqueued by the store in the step that records
                its success (never if it ends DEAD or CANCELLED).
            unique_key: while a job of this handler with this key is
                SCHEDULED, QUEUED or RUNNING, return that job and store
                nothing (atomic across threads and processes; README "Unique jobs").
            unique_for: also return any job of this handler with this key
                created less than this long ago (timedelta or seconds),
                finished or not.

        Raises:
            UnknownHandler: the handler is not registered.
            pydantic.ValidationError: the payload does not fit the handler's type.
            PayloadTooLarge: the payload exceeds the size or depth limit.
            ValueError: the payload holds NaN, an infinity or an int beyond 64
                bits (JSON cannot carry them faithfully); a ``delay`` that is
                negative, not finite or past the year 9999; a naive ``at``; an
                invalid ``queue`` (``""`` included); a ``priority`` beyond 32 bits.
            TypeError: ``delay``, ``at``, ``priority`` or ``headers`` of the wrong type.
            StorageError: the store could not write; nothing was stored.
        """
        job = self._build(
            handler, payload, delay, at, queue, priority, headers, unique_key, unique_for
        )
        if then:
            job = job.replace(followups=build_followups(then, self._build_followup))
        if connection is None:
            job = self._enqueue_chain(job)
        else:
            self._check_transactional()

            def persist_in_transaction(job: Job) -> Job:
                if job.unique_key is not None:
                    now = self.clock.now()
                    return add_unique(self.storage, [job], now=now, connection=connection)[0]
                self.storage.add_in_transaction([job], connection=connection)
                return job

            job = compose_enqueue(self.middleware, persist_in_transaction)(job)
        self._wake(job)
        return job

    def _check_transactional(self) -> None:
        # Refuse before the middleware runs: nothing is traced or counted for
        # an enqueue that can never be written.
        if not self.storage.capabilities.transactional_enqueue:
            raise TypeError(
                f"{type(self.storage).__name__} cannot join your transaction "
                "(connection=); use a store whose capabilities declare "
                "transactional_enqueue, such as PostgresStorage"
            )

    def enqueue_many(
        self,
        handler: type[Handler[Any]] | Callable[..., Any] | str,
        payloads: Iterable[object],
        *,
        delay: timedelta | float | None = None,
        at: datetime | None = None,
        queue: str | None = None,
        priority: int = 0,
        connection: Any = None,
        unique_key: Callable[[Any], str | None] | None = None,
        unique_for: timedelta | float | None = None,
    ) -> list[Job]:
        """Enqueue many jobs of one handler in one store write (all or none).

        Every payload is validated before anything is written (the errors are
        those of :meth:`enqueue`; one bad payload refuses the whole batch). The enqueue
        middleware sees each job before the store receives them as one batch
        (so its spans and counts cover building the batch, not the write).
        ``connection`` joins the caller's transaction, as in :meth:`enqueue`.

        ``unique_key`` is a function called with each payload as given,
        returning its key (or ``None``); ``unique_for`` applies to every keyed
        job. A job whose key is taken, by a stored job or by an earlier job of
        the batch, is not stored: its place in the returned list holds the job
        that has the key (so the list always matches ``payloads``).
        """
        if connection is not None:
            self._check_transactional()
        built = [
            self._build(
                handler,
                p,
                delay,
                at,
                queue,
                priority,
                None,
                None if unique_key is None else unique_key(p),
                unique_for,
            )
            for p in payloads
        ]
        collected: list[Job] = []

        def collect(job: Job) -> Job:
            collected.append(job)
            return job

        chain = compose_enqueue(self.middleware, collect)
        for job in built:
            chain(job)
        if any(job.unique_key is not None for job in collected):
            now = self.clock.now()
            collected = add_unique(self.storage, collected, now=now, connection=connection)
        elif connection is None:
            self.storage.add_many(collected)
        else:
            self.storage.add_in_transaction(collected, connection=connection)
        with self._workers_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.wake_all()
        return collected

    def _wake(self, job: Job) -> None:
        if not self._workers or job.state is not JobState.QUEUED:
            if job.state is JobState.SCHEDULED:
                self._wake_all()
            return
        with self._workers_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.wake()

    def _wake_all(self) -> None:
        with self._workers_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.wake_all()
