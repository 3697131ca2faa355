"""Job records to and from JSON (orjson), and the payload size and depth limits.

JSON only: nothing here can construct arbitrary Python objects from stored
bytes, so a tampered store can at worst yield a job that fails validation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import PayloadTooLarge
from .jobs import Job, JobError, JobState, Progress, check_job_id

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_MAX_PAYLOAD_DEPTH",
    "FORMAT_VERSION",
    "check_payload",
    "dump_job",
    "job_from_dict",
    "job_to_dict",
    "load_job",
    "progress_from_dict",
    "progress_to_dict",
]

FORMAT_VERSION = 1
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
DEFAULT_MAX_PAYLOAD_DEPTH = 32


def check_payload(
    payload: Any,
    *,
    max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    max_depth: int = DEFAULT_MAX_PAYLOAD_DEPTH,
) -> int:
    """Check a JSON-ready payload against the limits; return its encoded size.

    Raises:
        PayloadTooLarge: the payload nests deeper than ``max_depth`` or encodes
            to more than ``max_bytes``.
        TypeError: the payload is not JSON-serializable.
    """
    try:
        encoded = orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        _check_depth(payload, max_depth)  # the depth error comes first, as documented
        raise TypeError(f"payload is not JSON-serializable: {exc}") from None
    # Each level opens a bracket, so fewer brackets than the limit (strings'
    # included) proves the depth without walking the payload.
    if encoded.count(b"{") + encoded.count(b"[") > max_depth:
        _check_depth(payload, max_depth)
    size = len(encoded)
    if size > max_bytes:
        raise PayloadTooLarge(f"payload is {size} bytes; the limit is {max_bytes}")
    return size


def _check_depth(payload: Any, max_depth: int) -> None:
    if _depth(payload, max_depth) > max_depth:
        raise PayloadTooLarge(f"payload nests deeper than the limit of {max_depth} levels")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of containers in ``value``, stopping early once past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _encoder_time(value: datetime | None) -> datetime | str | None:
    # orjson writes an aware UTC datetime exactly as isoformat() does, in C,
    # at a sixth of the cost; any other zone keeps isoformat's form.
    if value is None or value.tzinfo is UTC:
        return value
    return value.isoformat()


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"naive timestamp in job record: {value!r}")
    return parsed


def job_to_dict(job: Job) -> dict[str, Any]:
    """Return the JSON-ready dict form of a job (the stored format)."""
    return _fields(job, _time)


def _fields(job: Job, when: Callable[[datetime | None], Any]) -> dict[str, Any]:
    """The stored form of ``job``, its times written by ``when``."""
    return {
        "v": FORMAT_VERSION,
        "id": job.id,
        "handler": job.handler,
        "queue": job.queue,
        "priority": job.priority,
        "state": job.state.value,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "run_at": when(job.run_at),
        "created_at": when(job.created_at),
        "started_at": when(job.started_at),
        "finished_at": when(job.finished_at),
        "worker_id": job.worker_id,
        "lease_expires_at": when(job.lease_expires_at),
        "claim_token": job.claim_token,
        "cancel_requested": job.cancel_requested,
        "run_alone": job.run_alone,
        "errors": [
            {
                "type": e.type,
                "message": e.message,
                "traceback": e.traceback,
                "attempt": e.attempt,
                "at": when(e.at),
            }
            for e in job.errors
        ],
        "headers": dict(job.headers),
        "payload": job.payload,
        "result": job.result,
        "progress": None if job.progress is None else progress_to_dict(job.progress),
        "version": job.version,
        "followups": [dict(f) for f in job.followups],
        **_limit_fields(job, when),
    }


def progress_to_dict(progress: Progress) -> dict[str, Any]:
    """The stored (JSON) form of a job's progress."""
    return {"done": progress.done, "total": progress.total, "message": progress.message}


def progress_from_dict(data: Any) -> Progress | None:
    """Rebuild a job's progress from its stored form (``None`` stays ``None``).

    Raises:
        ValueError: the stored form is not a progress record.
    """
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ValueError("malformed job record: progress is not an object")
    done, total, message = data.get("done"), data.get("total"), data.get("message")
    if not isinstance(done, int | float) or not (total is None or isinstance(total, int | float)):
        raise ValueError("malformed job record: progress numbers")
    return Progress(done, total, None if message is None else str(message))


def _limit_fields(job: Job, when: Callable[[datetime | None], Any]) -> dict[str, Any]:
    # Written only when set, so records of unlimited jobs stay as they were.
    fields: dict[str, Any] = {}
    if job.unique_key is not None:
        fields["unique_key"] = job.unique_key
        fields["unique_until"] = when(job.unique_until)
    if job.limited:
        fields["limited"] = True
        fields["concurrency_key"] = job.concurrency_key
    return fields


def job_from_dict(data: Mapping[str, Any]) -> Job:
    """Rebuild a job from its stored dict form.

    Raises:
        ValueError: a field is missing, of the wrong type, or the id is malformed.
    """
    try:
        if data.get("v") != FORMAT_VERSION:
            raise ValueError(f"unknown job record format version {data.get('v')!r}")
        payload = data["payload"]
        headers = data["headers"]
        if not isinstance(payload, dict) or not isinstance(headers, dict):
            raise ValueError("payload and headers must be JSON objects")
        return Job(
            id=check_job_id(data["id"]),
            handler=str(data["handler"]),
            payload=payload,
            queue=str(data["queue"]),
            priority=int(data["priority"]),
            state=JobState(data["state"]),
            attempts=int(data["attempts"]),
            max_attempts=int(data["max_attempts"]),
            run_at=_parse_time(data["run_at"]),
            created_at=_parse_time(data["created_at"]),
            started_at=_parse_time(data["started_at"]),
            finished_at=_parse_time(data["finished_at"]),
            worker_id=data["worker_id"],
            lease_expires_at=_parse_time(data["lease_expires_at"]),
            claim_token=data["claim_token"],
            cancel_requested=bool(data["cancel_requested"]),
            # Absent from records written before the field existed.
            run_alone=bool(data.get("run_alone", False)),
            errors=tuple(
                JobError(
                    type=str(e["type"]),
                    message=str(e["message"]),
                    traceback=str(e["traceback"]),
                    attempt=int(e["attempt"]),
                    at=_parse_time(e["at"]) or _missing("errors[].at"),
                )
                for e in data["errors"]
            ),
            headers={str(k): str(v) for k, v in headers.items()},
            # The four below are absent from records written before they existed.
            result=data.get("result"),
            progress=progress_from_dict(data.get("progress")),
            version=int(data.get("version", 1)),
            followups=tuple(_followups(data.get("followups", ()))),
            unique_key=_opt_str(data.get("unique_key")),
            unique_until=_parse_time(data.get("unique_until")),
            limited=bool(data.get("limited", False)),
            concurrency_key=_opt_str(data.get("concurrency_key")),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed job record: {exc!r}") from None


def _followups(items: Any) -> list[dict[str, Any]]:
    if not isinstance(items, list | tuple) or not all(isinstance(i, dict) for i in items):
        raise ValueError("malformed job record: followups must be a list of objects")
    return list(items)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _missing(name: str) -> datetime:
    raise ValueError(f"malformed job record: {name} is null")


def dump_job(job: Job, *, indent: bool = False) -> bytes:
    """Serialize a job to JSON bytes (``indent=True`` for human-readable files)."""
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(_fields(job, _encoder_time), option=option)


def load_job(data: bytes | str) -> Job:
    """Parse JSON bytes into a job.

    Raises:
        ValueError: the bytes are not valid JSON or not a valid job record.
    """
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"job record is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError("job record is not a JSON object")
    return job_from_dict(parsed)
