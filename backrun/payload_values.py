"""Which Python values a payload may hold: what JSON carries faithfully, within the depth limit.

:func:`check_values` runs on a payload as the caller passed it and again on
its validated form, before anything is stored: a NaN, an infinity or an int
beyond 64 bits would otherwise be stored as something else (null, or an
error at the store), and a payload nested past the limit is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from .errors import PayloadTooLarge

__all__ = ["check_values"]

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1  # the range orjson, and so every store, can encode


def check_values(value: object, max_depth: int) -> None:
    """Refuse what JSON cannot carry faithfully, anywhere in ``value``.

    Walks mappings, lists, tuples, sets and pydantic models.

    Raises:
        PayloadTooLarge: containers nest deeper than ``max_depth``.
        ValueError: a float is NaN or infinite, or an int is outside the range
            -2**63 .. 2**64-1; the message names where (``$.field[0]``).
    """
    if max_depth <= _FAST_DEPTH and _clean(value, max_depth):
        return
    # Something is wrong (or the limit is too deep to recurse): walk again,
    # keeping paths, to raise the first error exactly as this walk finds it.
    _walk(value, max_depth)


def _walk(value: object, max_depth: int) -> None:
    """check_values without recursion, naming where the first error is."""
    # Entries are (item, depth, key, parent entry): the path is built only on error.
    stack: list[tuple[Any, int, object, Any]] = [(value, 0, None, None)]
    while stack:
        entry = stack.pop()
        item, depth = entry[0], entry[1]
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(
                    f"payload holds {item!r} at {_path(entry)}: JSON has no NaN or "
                    "infinity (it would be stored as null); send null or a string"
                )
            continue
        if isinstance(item, int):
            if not _INT_MIN <= item <= _INT_MAX:
                raise ValueError(
                    f"payload holds an int beyond 64 bits at {_path(entry)}; send it as a string"
                )
            continue
        if isinstance(item, BaseModel):
            children: Any = item.__dict__.items()
            if item.__pydantic_extra__:
                children = [*children, *item.__pydantic_extra__.items()]
        elif isinstance(item, Mapping):
            children = item.items()
        elif isinstance(item, list | tuple | set | frozenset):
            children = enumerate(item)
        else:
            continue
        if depth + 1 > max_depth:
            raise PayloadTooLarge(f"payload nests deeper than the limit of {max_depth} levels")
        stack.extend((child, depth + 1, key, entry) for key, child in children)


_FAST_DEPTH = 64  # _clean recurses once per level: stay far from the recursion limit
_str, _bool, _int, _float, _dict, _list, _tuple = str, bool, int, float, dict, list, tuple
_NONE = type(None)


def _clean(value: Any, room: int) -> bool:
    """True when :func:`check_values` passes ``value`` with ``room`` levels left.

    The same rules without the paths, exact types first: the common payload
    is a model or dict of strings, ints and small lists, and this costs a few
    type checks per value where the full walk builds an entry for each.
    """
    kind = type(value)
    if kind is _str or kind is _bool or kind is _NONE:
        return True
    if kind is _int:
        return bool(_INT_MIN <= value <= _INT_MAX)
    if kind is _float:
        return math.isfinite(value)
    children: Any
    if kind is _dict:
        children = value.values()
    elif kind is _list or kind is _tuple:
        children = value
    # Any other type: check_values's own order of tests.
    elif isinstance(value, float):
        return math.isfinite(value)
    elif isinstance(value, int):
        return bool(_INT_MIN <= value <= _INT_MAX)
    elif isinstance(value, BaseModel):
        children = value.__dict__.values()
        if value.__pydantic_extra__:
            children = [*children, *value.__pydantic_extra__.values()]
    elif isinstance(value, Mapping):
        children = value.values()
    elif isinstance(value, list | tuple | set | frozenset):
        children = value
    else:
        return True
    if room <= 0:
        return False
    room -= 1
    for child in children:
        kind = type(child)
        if kind is _str or kind is _bool or kind is _NONE:
            continue
        if kind is _int:
            if _INT_MIN <= child <= _INT_MAX:
                continue
            return False
        if kind is _float:
            if child - child == 0.0:  # false for NaN and the infinities
                continue
            return False
        if not _clean(child, room):
            return False
    return True


def _path(entry: tuple[Any, int, object, Any]) -> str:
    parts: list[str] = []
    while entry[3] is not None:
        key = entry[2]
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
        entry = entry[3]
    return "$" + "".join(reversed(parts))
