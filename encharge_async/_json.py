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

__all__ = ["dumps", "loads", "use_orjson"]


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

    dumps = _fast
else:  # pragma: no cover
    dumps = _stdlib_only


def use_orjson(enabled: bool) -> None:
    """Switch between the orjson and stdlib serialisers (for tests and benchmarks)."""
    global dumps
    dumps = _fast if enabled and orjson is not None else _stdlib_only


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
