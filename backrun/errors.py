"""The exception hierarchy: every error backrun raises derives from BackrunError."""

from __future__ import annotations

__all__ = [
    "BackrunError",
    "DoNotRetry",
    "JobNotFound",
    "JobTimeout",
    "LeaseLost",
    "PayloadTooLarge",
    "StorageError",
    "UnknownHandler",
]


class BackrunError(Exception):
    """Base class of every error raised by backrun."""


class UnknownHandler(BackrunError, LookupError):
    """No handler is registered under that name or for that class."""


class JobNotFound(BackrunError, LookupError):
    """No job with that id exists in the store."""


class LeaseLost(BackrunError):
    """This worker no longer owns the job it tried to write.

    Raised by a store when the job was recovered, released or finished by
    someone else since this worker claimed it; the write changed nothing.
    """


class JobTimeout(BackrunError):
    """An attempt ran past its policy's timeout."""


class PayloadTooLarge(BackrunError, ValueError):
    """A payload exceeds the size or nesting-depth limit."""


class StorageError(BackrunError):
    """The store could not carry out an operation (I/O error, bad directory, ...)."""


class DoNotRetry(BackrunError):
    """Raise from a handler to fail the job at once, without further retries.

    The job goes straight to DEAD with this error recorded. Wrap the real cause
    with ``raise DoNotRetry("why") from exc`` to keep it in the traceback.
    """
