"""Handlers: the Handler base class, function handlers, the registry, discovery.

Everything about invoking a handler is prepared once, at registration: the
payload's pydantic ``TypeAdapter``, the factory, and whether ``execute``
takes a context. Running a job is then a validate, a construct and a call.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import pkgutil
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, Unpack, get_args, get_origin

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from .context import JobContext
from .errors import DoNotRetry, PayloadTooLarge, UnknownHandler
from .limits import HandlerLimits, LimitOptions, RateLimit, handler_limits
from .payload_values import check_values
from .retries import RetryPolicy
from .serialization import DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_PAYLOAD_DEPTH, check_payload

__all__ = [
    "Handler",
    "HandlerRegistry",
    "HandlerSpec",
    "handler",
]

P = TypeVar("P")
F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("backrun.handlers")

_MARK = "__backrun_handler__"
_ANY_ADAPTER: TypeAdapter[Any] = TypeAdapter(Any)


class Handler(Generic[P]):
    """Base class of class-based handlers; ``P`` is the payload type.

    Class attributes:
        name: the stable name stored with each job (default: ``module.qualname``).
            Set it explicitly before you rename or move the class.
        retry: a :class:`RetryPolicy` for this handler, overriding the engine's.
        queue: the queue its jobs go to unless ``enqueue`` says otherwise.
        version: the payload schema version (default 1), stored with each job.
            Raise it when the payload model changes incompatibly, and teach
            :meth:`upcast` to turn older payloads into the new shape.

    The return annotation of ``execute`` types its result: the value returned
    is stored (in its JSON form) with the job's success and read back with
    ``engine.result(job_id)``.
        max_concurrency: at most this many of its jobs run at once, over every
            worker process on the store (per ``concurrency_key`` value if set).
        concurrency_key: ``staticmethod(lambda payload: ...)`` returning a str:
            ``max_concurrency`` then applies per key (e.g. per tenant).
        rate_limit: a :class:`~backrun.RateLimit`: at most ``n`` starts per
            ``per``, over every worker process on the store.

    A handler instance is built per job by its factory (default: the class
    called with no arguments), so instances need not be thread-safe.
    """

    name: ClassVar[str]
    retry: ClassVar[RetryPolicy | None] = None
    queue: ClassVar[str | None] = None
    version: ClassVar[int] = 1
    max_concurrency: ClassVar[int | None] = None
    concurrency_key: ClassVar[Callable[[Any], str] | None] = None
    rate_limit: ClassVar[RateLimit | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = f"{cls.__module__}.{cls.__qualname__}"

    def execute(self, payload: P, ctx: JobContext) -> Any:
        """Do the job. May leave out ``ctx``. Raise to fail the attempt."""
        raise NotImplementedError

    @classmethod
    def upcast(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Turn a stored payload of an older ``version`` into this version's shape.

        Called before validation for each job stored with a version below
        :attr:`version`; the default returns ``data`` unchanged. An exception
        here is final: the job goes DEAD with it (retrying cannot help).
        """
        return data


def handler(
    name: str | None = None,
    *,
    retry: RetryPolicy | None = None,
    queue: str | None = None,
    **limits: Unpack[LimitOptions],
) -> Callable[[F], F]:
    """Mark a function as a handler for :meth:`Engine.add_handlers_from_package`.

    The payload type is the first parameter's annotation; the function may
    take ``(payload)`` or ``(payload, ctx)``. The function is returned as is.
    ``limits`` are ``max_concurrency``, ``concurrency_key`` and ``rate_limit``,
    as for :meth:`Engine.handler`.
    """
    handler_limits(**limits)  # refuse bad limits where they are written

    def mark(fn: F) -> F:
        setattr(fn, _MARK, {"name": name, "retry": retry, "queue": queue, **limits})
        return fn

    return mark


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered handler, with its invocation path prepared.

    Attributes:
        name: the persisted name.
        target: the Handler subclass or the function.
        adapter: validates and dumps payloads.
        invoke: runs the handler on a stored (JSON-ready) payload.
        retry: the handler's own policy, or ``None`` for the engine's.
        queue: the handler's default queue, or ``None``.
        result_adapter: dumps and validates return values (from the return
            annotation; ``Any`` when there is none).
        version: the payload schema version new jobs are stored with.
    """

    name: str
    target: object
    adapter: TypeAdapter[Any]
    invoke: Callable[[dict[str, Any], JobContext], Any]
    retry: RetryPolicy | None
    queue: str | None
    result_adapter: TypeAdapter[Any] = _ANY_ADAPTER
    version: int = 1

    def dump_result(self, value: object, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Any:
        """Return the JSON form of a handler's return value, as stored with its success.

        Raises:
            PayloadTooLarge: the result encodes to more than ``max_bytes``
                (results share the payload limit) or nests too deep.
            ValueError: the result does not serialize as its return type says.
        """
        if value is None:
            return None  # most handlers return nothing: no serializer, no size check
        try:
            dumped = self.result_adapter.dump_python(value, mode="json")
        except PydanticSerializationError as exc:
            raise ValueError(
                f"handler {self.name!r} returned a value its return type cannot store: {exc}"
            ) from exc
        try:
            check_payload(dumped, max_bytes=max_bytes)
        except PayloadTooLarge as exc:
            raise PayloadTooLarge(
                f"handler {self.name!r} returned a result too large to store ({exc}); "
                "store big results elsewhere and return a reference"
            ) from None
        except TypeError as exc:
            raise ValueError(f"handler {self.name!r} returned an unstorable value: {exc}") from None
        return dumped

    def load_result(self, stored: Any) -> Any:
        """Validate a stored result back into the handler's return type."""
        return self.result_adapter.validate_python(stored)

    limits: HandlerLimits | None = None
    """Its concurrency and rate limits, or ``None``."""
    concurrency_key: Callable[[Any], str] | None = None
    """Maps a validated payload to the key ``max_concurrency`` applies per."""

    def dump(self, payload: object, max_depth: int = DEFAULT_MAX_PAYLOAD_DEPTH) -> dict[str, Any]:
        """Validate ``payload`` (a model or a plain mapping) and return its JSON form.

        Raises:
            PayloadTooLarge: the payload nests deeper than ``max_depth``.
            ValueError: the payload holds NaN or an infinity (JSON has neither:
                it would be stored as null), or an int outside the 64-bit range.
            pydantic.ValidationError: the payload does not fit the handler's type.
            TypeError: the payload type does not serialize to a JSON object.
        """
        adapter = self.adapter
        # Before validation too: a deep enough input makes pydantic itself fail obscurely.
        check_values(payload, max_depth)
        # The adapter's core validator and serializer, called with the defaults
        # its validate_python and dump_python pass: their wrappers cost more than
        # validating a model instance (0.5 of 0.6 us) and half of dumping it.
        value = adapter.validator.validate_python(payload)
        if value is not payload:
            check_values(value, max_depth)  # coercion can make NaN ("nan" -> float)
        dumped = adapter.serializer.to_python(value, mode="json")
        if not isinstance(dumped, dict):
            raise TypeError(
                f"handler {self.name!r}: payload must serialize to a JSON object, "
                f"got {type(dumped).__name__}"
            )
        return dumped


def _stored_payload_validator(
    name: str,
    adapter: TypeAdapter[Any],
    version: int = 1,
    upcast: Callable[[dict[str, Any], int], dict[str, Any]] | None = None,
) -> Callable[[Any, int], Any]:
    """Validate a stored payload at run time; a misfit is final (``DoNotRetry``).

    A payload stored with an older version than ``version`` goes through
    ``upcast`` first. The same bytes fail the same way on every attempt, so the
    job goes DEAD at once with pydantic's message (the ``ValidationError`` is
    kept as the cause), or with what ``upcast`` raised.
    """
    validate = adapter.validate_python

    def validated(payload: Any, stored_version: int = version) -> Any:
        if upcast is not None and stored_version < version:
            try:
                payload = upcast(payload, stored_version)
            except Exception as exc:
                raise DoNotRetry(
                    f"handler {name!r} could not upcast a version {stored_version} payload "
                    f"to version {version} (not retried): {exc!r}"
                ) from exc
        try:
            return validate(payload)
        except ValidationError as exc:
            raise DoNotRetry(
                f"the stored payload does not fit handler {name!r} (not retried): {exc}"
            ) from exc

    return validated


def _positional_count(fn: Callable[..., Any]) -> int:
    params = inspect.signature(fn).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in kinds)


def _first_param_type(fn: Callable[..., Any], skip_self: bool) -> Any:
    params = list(inspect.signature(fn).parameters.values())
    if skip_self:
        params = params[1:]
    if not params:
        raise TypeError(f"{fn.__qualname__} must take a payload parameter")
    if params[0].annotation is inspect.Parameter.empty:
        return Any
    return _resolve_hints(fn).get(params[0].name, Any)


def _resolve_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The function's resolved annotations, looking in its callers' locals too.

    A handler and its payload model defined inside a function (a test, an app
    factory) have string annotations that the module's globals cannot resolve;
    like pydantic, look in the frames that are registering it.
    """
    try:
        return typing.get_type_hints(fn)
    except NameError as first_error:
        frame = sys._getframe(1)
        while frame is not None:
            try:
                return typing.get_type_hints(fn, localns=frame.f_locals)
            except NameError:
                frame = frame.f_back  # type: ignore[assignment]
        raise TypeError(
            f"cannot resolve the payload annotation of {fn.__qualname__} ({first_error}); "
            "define the payload model where the handler can see it"
        ) from None


def _payload_type(cls: type[Handler[Any]]) -> Any:
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if get_origin(base) is Handler:
                args = get_args(base)
                if args and not isinstance(args[0], TypeVar):
                    return args[0]
    return _first_param_type(cls.execute, skip_self=True)


def _spec_for_class(
    cls: type[Handler[Any]], factory: Callable[[], Handler[Any]] | None
) -> HandlerSpec:
    if cls.execute is Handler.execute:
        raise TypeError(f"{cls.__qualname__} must override execute(payload[, ctx])")
    if factory is None:
        required = [
            p
            for p in list(inspect.signature(cls).parameters.values())
            if p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if required:
            raise TypeError(
                f"{cls.__qualname__}() needs arguments; register it with "
                f"add_handler({cls.__name__}, factory=...)"
            )
        factory = cls
    version = cls.version
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TypeError(f"{cls.__qualname__}.version must be an int >= 1, not {version!r}")
    adapter: TypeAdapter[Any] = TypeAdapter(_payload_type(cls))
    validate = _stored_payload_validator(cls.name, adapter, version, cls.upcast)
    make = factory
    takes_ctx = _positional_count(cls.execute) >= 3

    if takes_ctx:

        def invoke(payload: dict[str, Any], ctx: JobContext) -> Any:
            return make().execute(validate(payload, ctx.job.version), ctx)
    else:

        def invoke(payload: dict[str, Any], ctx: JobContext) -> Any:
            return make().execute(validate(payload, ctx.job.version))  # type: ignore[call-arg]

    result = _result_adapter(cls.execute)
    limits = handler_limits(
        max_concurrency=cls.max_concurrency,
        concurrency_key=cls.concurrency_key,
        rate_limit=cls.rate_limit,
    )
    return HandlerSpec(
        cls.name,
        cls,
        adapter,
        invoke,
        cls.retry,
        cls.queue,
        result,
        version,
        limits,
        cls.concurrency_key,
    )


def _result_adapter(fn: Callable[..., Any]) -> TypeAdapter[Any]:
    """The ``TypeAdapter`` of ``fn``'s return annotation (``Any`` when it has none)."""
    if inspect.signature(fn).return_annotation is inspect.Signature.empty:
        return _ANY_ADAPTER
    try:
        hint = _resolve_hints(fn).get("return", Any)
    except TypeError:
        # Another annotation (a ctx type imported under TYPE_CHECKING) cannot be
        # resolved: that must not refuse the handler; its return value is stored as is.
        log.warning(
            "%s: cannot resolve its annotations; its return value is stored untyped",
            fn.__qualname__,
        )
        return _ANY_ADAPTER
    return _ANY_ADAPTER if hint is Any else TypeAdapter(hint)


def _spec_for_function(
    fn: Callable[..., Any], name: str | None, retry: RetryPolicy | None, queue: str | None
) -> HandlerSpec:
    adapter: TypeAdapter[Any] = TypeAdapter(_first_param_type(fn, skip_self=False))
    count = _positional_count(fn)
    if count == 0 or count > 2:
        raise TypeError(f"{fn.__qualname__} must take (payload) or (payload, ctx)")
    resolved = name or f"{fn.__module__}.{fn.__qualname__}"
    validate = _stored_payload_validator(resolved, adapter)

    if count == 2:

        def invoke(payload: dict[str, Any], ctx: JobContext) -> Any:
            return fn(validate(payload, ctx.job.version), ctx)
    else:

        def invoke(payload: dict[str, Any], ctx: JobContext) -> Any:
            return fn(validate(payload, ctx.job.version))

    result = _result_adapter(fn)
    return HandlerSpec(resolved, fn, adapter, invoke, retry, queue, result)


class HandlerRegistry:
    """Handlers by persisted name and by the class or function registered."""

    def __init__(self) -> None:
        self._by_name: dict[str, HandlerSpec] = {}
        self._by_target: dict[object, HandlerSpec] = {}

    def _add(self, spec: HandlerSpec) -> HandlerSpec:
        existing = self._by_name.get(spec.name)
        if existing is not None:
            raise ValueError(
                f"a handler named {spec.name!r} is registered already ({existing.target!r})"
            )
        self._by_name[spec.name] = spec
        self._by_target[spec.target] = spec
        return spec

    def add_class(
        self, cls: type[Handler[Any]], factory: Callable[[], Handler[Any]] | None = None
    ) -> HandlerSpec:
        """Register a Handler subclass, built per job by ``factory``."""
        if not (isinstance(cls, type) and issubclass(cls, Handler)):
            raise TypeError(f"{cls!r} is not a backrun.Handler subclass")
        return self._add(_spec_for_class(cls, factory))

    def add_function(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
        **limits: Unpack[LimitOptions],
    ) -> HandlerSpec:
        """Register a function handler."""
        if not callable(fn) or isinstance(fn, type):
            raise TypeError(f"{fn!r} is not a function")
        checked = handler_limits(**limits)
        spec = _spec_for_function(fn, name, retry, queue)
        key = limits.get("concurrency_key")
        return self._add(dataclasses.replace(spec, limits=checked, concurrency_key=key))

    def add_package(self, package: str) -> list[HandlerSpec]:
        """Import every module of ``package`` and register the handlers defined there.

        Registers each concrete Handler subclass defined in those modules and
        each function marked with :func:`handler`; skips what is registered
        already, so explicit registrations with factories come first.
        """
        root = importlib.import_module(package)
        modules = [root]
        for info in pkgutil.walk_packages(getattr(root, "__path__", []), prefix=f"{package}."):
            modules.append(importlib.import_module(info.name))
        added: list[HandlerSpec] = []
        for module in modules:
            for obj in list(vars(module).values()):
                if getattr(obj, "__module__", None) != module.__name__ or obj in self._by_target:
                    continue
                if isinstance(obj, type) and issubclass(obj, Handler):
                    if obj.execute is not Handler.execute and not inspect.isabstract(obj):
                        added.append(self.add_class(obj))
                elif callable(obj) and isinstance(getattr(obj, _MARK, None), Mapping):
                    options = getattr(obj, _MARK)
                    added.append(self.add_function(obj, **options))
        return added

    def resolve(self, handler: object) -> HandlerSpec:
        """Return the spec for a name, a registered class or a registered function.

        Raises:
            UnknownHandler: nothing is registered under it.
        """
        spec = (
            self._by_name.get(handler) if isinstance(handler, str) else self._by_target_get(handler)
        )
        if spec is None:
            shown = (
                handler if isinstance(handler, str) else getattr(handler, "__qualname__", handler)
            )
            raise UnknownHandler(f"no handler registered for {shown!r}")
        return spec

    def _by_target_get(self, handler: object) -> HandlerSpec | None:
        try:
            return self._by_target.get(handler)
        except TypeError:
            return None

    def get(self, name: str) -> HandlerSpec | None:
        """Return the spec registered under ``name``, or ``None``."""
        return self._by_name.get(name)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._by_name)

    def count(self) -> int:
        """How many names are registered (asked per claim: costs no sort)."""
        return len(self._by_name)
