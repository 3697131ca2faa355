"""Concurrency and rate limits in the JSON file store: slot files and a starts log.

Layout, under the store's root (``<h>`` and ``<g>`` are digests, never raw
names or keys)::

    limits/locks/<h>.lock        one flock per limited handler
    limits/slots/<g>/<id>~<token> one file per RUNNING job of a group
                                 (group = handler and concurrency key)
    limits/starts/<h>.json       the handler's recent starts (ns), oldest first

A limited job is claimed only while its handler's lock is held: the slots of
its group are counted, the starts of the last ``per`` counted, and only if both
allow it is a slot file created, the start logged and the job renamed into
``running/``. A slot counts only while its job is RUNNING under that token;
one whose job is not (finished, rescued as an orphan, its claim never made
because the claimer died) is deleted by the next claimer that finds the group
full, under the same lock, so a slot can never leak. The owner's update that
takes a job out of RUNNING deletes its slot at once and touches ``limits/``,
which the store's watcher stats, so waiting workers in every process wake.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import orjson

from backrun.jobs import Job, JobState
from backrun.limits import (
    CONCURRENCY,
    RATE,
    HandlerLimits,
    LimitedClaim,
    forget_before,
    group_hash,
    limits_for,
)
from backrun.storage import fs

from .core import from_ns, storage_errors, to_ns
from .layout import (
    Place,
    ReadyName,
    check_worker_id,
    claim_name,
    parse_claim,
    parse_ready,
    parse_running,
    random_hex,
    running_name,
    to_key,
)
from .unique import exclusive
from .window import ReadyCache

if TYPE_CHECKING:
    from .claims import Claims
    from .core import StoreContext
    from .ops import Ops
    from .queries import Reads


__all__ = ["Limits"]

LIMITS_DIR = "limits"
_FACTS_KEPT = 10_000


@dataclass
class _Claiming:
    jobs: list[Job] = field(default_factory=list)
    waiting: list[tuple[str, str, str]] = field(default_factory=list)
    retry_at: datetime | None = None


class Limits:
    """:meth:`claim_limited` for :class:`~backrun.storage.jsonfile.JsonFileStorage`."""

    def __init__(self, ctx: StoreContext, *, claims: Claims, ops: Ops, reads: Reads) -> None:
        self.ctx = ctx
        self.claims = claims
        self.ops = ops
        self.reads = reads

    def _limits_path(self, *parts: str, directory: bool = False) -> str:
        """A path under ``limits/``, its parent directories made (and itself, if a directory)."""
        current = self.ctx.limits_dir
        for part in ("", *(parts if directory else parts[:-1])):
            current = os.path.join(current, part) if part else current
            with contextlib.suppress(FileExistsError):
                fs.mkdir(current)
        return os.path.join(self.ctx.limits_dir, *parts)

    def claim_limited(
        self,
        *,
        queues: Collection[str] | None,
        limit: int,
        now: datetime,
        worker_id: str,
        lease: timedelta,
        limits: Mapping[str, HandlerLimits],
    ) -> LimitedClaim:
        """Claim, skipping jobs a limit holds back; see :meth:`Storage.claim_limited`."""
        check_worker_id(worker_id)
        now_key = to_key(now)
        lease_ns = to_ns(now + lease)
        result = _Claiming()
        held: dict[tuple[str, str | None], str] = {}
        # Names a limit holds back are taken out of the caches while this claim
        # looks further, so each step is the caches' own "best due" (cheap when
        # nothing is held), and put back at the end.
        set_aside: list[tuple[ReadyCache, ReadyName]] = []
        with storage_errors("claim"):
            busy = self.ctx.claims_full
            qencs = self.ops.claimable(self.reads.queues_for(queues, fresh=not busy))
            self.claims.refresh(qencs, now_key, fresh=not busy)
            try:
                while len(result.jobs) < limit:
                    with self.ctx.mutex:
                        best: tuple[str, str] | None = None
                        for qenc in qencs:
                            name = self.ctx.cache(qenc).best_due(now_key)
                            if name is not None and (best is None or name < best[1]):
                                best = (qenc, name)
                        if best is None:
                            # Every due job in the windows is held back: look
                            # past them at the jobs the windows did not hold.
                            aside = {parsed.name for _, parsed in set_aside}
                            spent = [q for q in qencs if self.ctx.cache(q).spent(now_key)]
                            for qenc in spent:
                                self.ctx.cache(qenc).refresh(now_key, exclude=aside)
                            if spent:
                                continue
                    if best is None:
                        break
                    cache = self.ctx.cache(best[0])
                    got = self._consider(
                        result, held, set_aside, cache, best[1], now, worker_id, lease_ns, limits
                    )
                    if got is not None:
                        result.jobs.append(got)
            finally:
                with self.ctx.mutex:
                    for cache, parsed in set_aside:
                        cache.add(parsed)
        self.ctx.claims_full = len(result.jobs) >= limit
        return LimitedClaim(result.jobs, result.waiting, result.retry_at)

    def _consider(
        self,
        result: _Claiming,
        held: dict[tuple[str, str | None], str],
        set_aside: list[tuple[ReadyCache, ReadyName]],
        cache: ReadyCache,
        name: str,
        now: datetime,
        worker_id: str,
        lease_ns: int,
        limits: Mapping[str, HandlerLimits],
    ) -> Job | None:
        """Claim the due job ``name`` if its limits allow, else set it aside; the claim or None."""
        job = self._ready_facts(cache, name)
        if job is None:
            return None
        rules = limits_for(job, limits)
        if rules is None:
            return self._take(cache, name, random_hex(16), now, worker_id, lease_ns)
        waiting = len(result.waiting)
        got = self._take_limited(result, held, cache, name, job, rules, now, worker_id, lease_ns)
        if got is None and len(result.waiting) > waiting:
            parsed = parse_ready(name)
            assert parsed is not None
            with self.ctx.mutex:
                cache.discard(name)
            set_aside.append((cache, parsed))
        return got

    def _ready_facts(self, cache: ReadyCache, name: str) -> Job | None:
        """The record of a ready job (its handler and limit fields never change), cached."""
        parsed = parse_ready(name)
        assert parsed is not None
        facts = self.ctx.facts.get(parsed.job_id)
        if facts is None:
            facts = self.ctx.files.read(os.path.join(cache.path, name))
            if facts is None:
                with self.ctx.mutex:
                    cache.discard(name)
                return None
            if len(self.ctx.facts) >= _FACTS_KEPT:
                self.ctx.facts.clear()
            self.ctx.facts[parsed.job_id] = facts
        return facts

    def _take(
        self, cache: ReadyCache, name: str, token: str, now: datetime, worker_id: str, lease_ns: int
    ) -> Job | None:
        """Claim the ready file ``name`` by renaming it into ``running/``; ``None`` if lost."""
        parsed = parse_ready(name)
        assert parsed is not None
        with self.ctx.mutex:
            cache.discard(name)
        rname = running_name(parsed.job_id, token, now, worker_id)
        path = os.path.join(self.ctx.running_dir, rname)
        ready = os.path.join(cache.path, name)
        try:
            fs.rename(ready, path)
        except FileNotFoundError:
            return None  # another process took it
        except OSError:
            with self.ctx.mutex:
                cache.add(parsed)
            raise
        with self.ctx.claims_lock:
            self.ctx.mine[parsed.job_id] = rname
        self.ctx.facts.pop(parsed.job_id, None)
        return self.claims.claimed(path, rname, lease_ns, ready)

    def _take_limited(
        self,
        result: _Claiming,
        held: dict[tuple[str, str | None], str],
        cache: ReadyCache,
        name: str,
        job: Job,
        rules: HandlerLimits,
        now: datetime,
        worker_id: str,
        lease_ns: int,
    ) -> Job | None:
        group = (job.handler, job.concurrency_key)
        rate_group = (job.handler, None) if rules.rate_limit is not None else None
        known = held.get(group) or (held.get(rate_group) if rate_group else None)
        if known is not None:
            result.waiting.append((job.id, job.handler, known))
            return None
        handler_hash = group_hash("handler", job.handler, None)
        lock = self._limits_path("locks", handler_hash + ".lock")
        slot: str | None = None
        with exclusive([lock]):
            if rules.max_concurrency is not None:
                slots = self._limits_path("slots", group_hash("group", *group), directory=True)
                if self._busy_slots(slots) >= rules.max_concurrency:
                    held[group] = CONCURRENCY
                    result.waiting.append((job.id, job.handler, CONCURRENCY))
                    return None
            starts: list[int] = []
            starts_path = ""
            if rules.rate_limit is not None:
                rate = rules.rate_limit
                starts_path = self._limits_path("starts", handler_hash + ".json")
                per_ns = rate.per // timedelta(microseconds=1) * 1000
                # Every start after now - per counts, later ones (another
                # claimer's clock) included: no window of length per holds more than n.
                since = to_ns(now) - per_ns
                keep = to_ns(forget_before(now, rate))
                starts = sorted(s for s in self._read_starts(starts_path) if s > keep)
                counted = [s for s in starts if s > since]
                if len(counted) >= rate.n:
                    held[(job.handler, None)] = RATE
                    result.waiting.append((job.id, job.handler, RATE))
                    opens = from_ns(counted[-rate.n] + per_ns)
                    if result.retry_at is None or opens < result.retry_at:
                        result.retry_at = opens
                    return None
                self._write_starts(starts_path, sorted([*starts, to_ns(now)]))
            token = random_hex(16)
            if rules.max_concurrency is not None:
                slot = os.path.join(slots, claim_name(job.id, token))
                self.ctx.files.write_new(slot, b"", sync=False)
            got: Job | None = None
            try:
                got = self._take(cache, name, token, now, worker_id, lease_ns)
            finally:
                if got is None:  # not claimed: give back the slot and the start
                    if slot is not None:
                        self.ctx.files.discard(slot)
                    if starts_path:
                        self._write_starts(starts_path, starts)
            return got

    def _busy_slots(self, slots: str) -> int:
        """How many slots of a group are held by RUNNING claims (lock held); frees the rest."""
        names = self.ctx.names_in(slots)
        if not names:
            return 0
        running = {
            claim_name(claim.job_id, claim.token)
            for claim in map(parse_running, self.ctx.running_entries())
            if claim is not None
        }
        busy = 0
        for slot in names:
            if slot in running or self._still_running(slot):
                busy += 1
            else:
                self.ctx.files.discard(os.path.join(slots, slot))
        return busy

    def _still_running(self, slot: str) -> bool:
        """True if the claim a slot names is RUNNING (or mid-change) after all."""
        claim = parse_claim(slot)
        if claim is None:
            return False
        job_id, token = claim
        found = self.reads.locate(job_id)
        if found is None:
            return False
        if found.kind is Place.GRABBED:
            return True  # an owner's write under way: its outcome decides
        return found.job.state is JobState.RUNNING and found.job.claim_token == token

    @staticmethod
    def _read_starts(path: str) -> list[int]:
        try:
            loaded = orjson.loads(fs.read_file(path))
        except (FileNotFoundError, orjson.JSONDecodeError):
            return []
        return [int(s) for s in loaded] if isinstance(loaded, list) else []

    def _write_starts(self, path: str, starts: list[int]) -> None:
        tmp = self.ctx.files.write_tmp(orjson.dumps(starts), sync=False)
        try:
            fs.rename(tmp, path)
        except Exception:
            self.ctx.files.discard(tmp)
            raise

    def release_slot(self, job: Job, token: str) -> None:
        """A limited job left RUNNING under ``token``: free its slot, wake waiting workers."""
        if not job.limited:
            return
        slots = os.path.join(
            self.ctx.limits_dir, "slots", group_hash("group", job.handler, job.concurrency_key)
        )
        with contextlib.suppress(OSError):
            fs.unlink(os.path.join(slots, claim_name(job.id, token)))
        with contextlib.suppress(OSError):
            fs.utime(self.ctx.limits_dir, time.time_ns())
