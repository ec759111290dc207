"""JSON serialisation of events: orjson when installed (the `fast` extra), else the stdlib.

Both paths produce compact UTF-8 JSON, turn datetimes, dates, times, UUIDs, Decimals,
enums, sets and dataclasses into JSON values, and refuse NaN and infinity.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

from ._constants import MAX_NESTING_DEPTH
from ._exceptions import ValidationError

__all__ = [
    "container_size",
    "dumps",
    "dumps_plain",
    "loads",
    "plain_size",
    "size_bound",
    "use_orjson",
]


def _default(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError("Decimal value is not finite")
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_stdlib_encoder = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False, ensure_ascii=False, default=_default
)


def _stdlib_dumps(obj: Any) -> bytes:
    return _stdlib_encoder.encode(obj).encode("utf-8")


orjson: Any
try:
    import orjson
except ImportError:  # pragma: no cover - without the `fast` extra
    orjson = None


def _too_deep(obj: object, limit: int) -> bool:
    """Whether containers nest deeper than `limit` in `obj` (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, (list, tuple, set, frozenset)):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _stdlib_only(obj: Mapping[str, Any]) -> bytes:
    # The same limit orjson applies, on every Python (the stdlib's own recursion limit moved
    # from ~990 to ~10,000 levels between 3.11 and 3.13).
    if _too_deep(obj, MAX_NESTING_DEPTH):
        raise ValidationError(
            f"event is nested too deeply to serialise (more than {MAX_NESTING_DEPTH} levels)"
        )
    return _stdlib_plain(obj)


def _stdlib_plain(obj: Mapping[str, Any]) -> bytes:
    # Without the depth walk: `plain_size` accepted the event, so it nests at most
    # _PLAIN_DEPTH levels.
    try:
        return _stdlib_dumps(obj)
    except RecursionError:  # a reference cycle through a converted value
        raise ValidationError("event is nested too deeply to serialise") from None
    except (TypeError, ValueError) as exc:
        try:
            found = _find_unserialisable(obj, "")
        except RecursionError:  # a reference cycle ("Circular reference detected")
            found = None
        path, problem = found if found is not None else ("", str(exc))
        raise ValidationError(f"{path or 'event'}: {problem}") from None


if orjson is not None:
    _orjson_dumps = orjson.dumps
    _ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS

    def _fast(obj: Mapping[str, Any]) -> bytes:
        try:
            data: bytes = _orjson_dumps(obj, default=_default, option=_ORJSON_OPTIONS)
        except (TypeError, ValueError):
            # orjson refuses some values the stdlib takes (non-string keys, ints over 64
            # bits): let the stdlib decide, and name the offending field if it refuses too.
            return _stdlib_only(obj)
        # orjson writes NaN and infinity as null; only then is the strict stdlib check needed.
        if data.rfind(b"null") != -1:  # rfind() beats find() by a quarter, `in` by half
            return _stdlib_only(obj)
        # orjson's bytes keep the 4 KiB buffer they were written into; a queued event should
        # not: an exact-size copy saves ~4 KB per event held. `%` is the cheapest copy (a
        # third of memoryview(data).tobytes(); slices and bytes() return `data` itself).
        return b"%b" % data

    def _fast_plain(obj: Mapping[str, Any]) -> bytes:
        # Only values `plain_size` accepted come here: no `default` needed, and no NaN or
        # infinity, so no scan for the nulls orjson would have written for them.
        try:
            data: bytes = _orjson_dumps(obj)
        except TypeError:  # ints over 64 bits, non-string keys, lone surrogates
            return _stdlib_plain(obj)
        return b"%b" % data

    dumps = _fast
    dumps_plain = _fast_plain
else:  # pragma: no cover
    dumps, dumps_plain = _stdlib_only, _stdlib_plain


def use_orjson(enabled: bool) -> None:
    """Switch between the orjson and stdlib serialisers (for tests and benchmarks)."""
    global dumps, dumps_plain
    if enabled and orjson is not None:
        dumps, dumps_plain = _fast, _fast_plain
    else:
        dumps, dumps_plain = _stdlib_only, _stdlib_plain


# -- Sizes before serialising ------------------------------------------------------------------
#
# Serialising a value costs its size again (orjson reserves more still), so an event far over
# max_event_bytes is refused from a lower bound of its size, counted without serialising.
# Counted: one byte per item of each container and the characters of every string, which
# take at least that much room in the JSON text. The walk runs on the caller's line for every
# event: it is written for the interpreter's cheapest operations (docs/performance.md).

# Deeper than this, `plain_size` hands over to the careful walk, which knows the exact limit.
_PLAIN_DEPTH = 32


def plain_size(obj: Mapping[str, Any], limit: int) -> int:
    """A lower bound of the JSON size of a dict of plain JSON values; -1 if it holds others.

    Plain: exactly str, int, bool, None, finite floats, and dicts, lists and tuples of them:
    what `dumps_plain` takes. Anything else (a NaN, a datetime, a subclass, deep nesting)
    gets -1: `size_bound` and `dumps` then. Keys are not counted here (the exact check after
    serialising still applies to them); `size_bound` counts them. `build_track` has this
    function's first level inline.
    """
    return _plain_deep(obj, limit, 2)


def container_size(value: dict[str, Any] | list[Any] | tuple[Any, ...], limit: int) -> int:
    """`plain_size` of a dict, list or tuple among an event's properties."""
    return _plain_deep(value, limit, 3)


def _plain_deep(container: Any, limit: int, depth: int) -> int:
    """`plain_size` of a dict, list or tuple at `depth` (the event is depth 1)."""
    size = len(container)
    if size > limit:  # a long list of numbers: no need to look at them
        return size
    if depth > _PLAIN_DEPTH:
        return -1
    for value in container.values() if type(container) is dict else container:
        kind = type(value)
        if kind is str:
            size += len(value)
        elif kind is dict or kind is list or kind is tuple:
            inner = _plain_deep(value, limit, depth + 1)
            if inner < 0:
                return -1
            size += inner
            if size > limit:
                return size
        elif not (
            kind is int or kind is bool or value is None or (kind is float and value - value == 0.0)
        ):
            return -1
    return size


def size_bound(obj: object, limit: int) -> int:
    """A lower bound of the JSON size of any value `dumps` takes, counted as `plain_size` does.

    Values serialised through `_default` (datetimes, Decimals, dataclasses, enums, sets) are
    converted to count them; keys count too. Stops once the count passes `limit` (before
    looking into a container that takes it past); does not descend past MAX_NESTING_DEPTH
    (serialising then reports the depth). Only containers and converted values are stacked.
    """
    stack: list[tuple[object, int]] = []
    size = _leaf_size(obj, 0, stack)
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            size += len(value)
            if size > limit:
                break
            if depth > MAX_NESTING_DEPTH:
                continue
            for key, item in value.items():
                size += len(key) if isinstance(key, str) else 1
                size += _leaf_size(item, depth, stack)
        elif isinstance(value, (list, tuple)):
            size += len(value)
            if size > limit:
                break
            if depth > MAX_NESTING_DEPTH:
                continue
            for item in value:
                size += _leaf_size(item, depth, stack)
        else:
            try:
                converted = _default(value)
            except (TypeError, ValueError):
                continue  # not serialisable: `dumps` says so
            size += _leaf_size(converted, depth - 1, stack)
        if size > limit:
            break
    return size


def _leaf_size(value: object, depth: int, stack: list[tuple[object, int]]) -> int:
    """The size of a string or a number (0: its container counted it); others are stacked."""
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    if value is None or isinstance(value, (int, float)):
        return 0
    stack.append((value, depth + 1))
    return 0


def loads(data: bytes | str) -> Any:
    return json.loads(data)


def _find_unserialisable(value: Any, path: str) -> tuple[str, str] | None:
    """Return (path, problem) for the first value that cannot become JSON, else None."""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return path, f"{value!r} is not allowed in JSON"
        return None
    if value is None or isinstance(value, (str, int, bool)):
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                return path, f"key {key!r} is not a string"
            found = _find_unserialisable(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find_unserialisable(item, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    try:
        converted = _default(value)
    except (TypeError, ValueError) as exc:
        return path, str(exc)
    return _find_unserialisable(converted, path)
