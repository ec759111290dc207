"""Read an import file (JSONL or CSV) into client calls, one per line, bad lines flagged."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = ["BadLine", "Call", "count_records", "read_calls"]

_METHODS = {
    "track": {"name", "email", "user_id", "user", "properties", "source_ip"},
    "identify": {"email", "user_id", "user"},
    "alias": {"previous_email", "previous_user_id", "email", "user_id"},
    "group": {"object_type", "properties", "email", "user_id", "user"},
}


@dataclass(frozen=True, slots=True)
class Call:
    """One client call read from line `line` of the file."""

    line: int
    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that could not be turned into a call; `raw` is its text."""

    line: int
    error: str
    raw: str


def file_format(path: Path) -> str:
    return "csv" if path.suffix.lower() == ".csv" else "jsonl"


def count_records(path: Path) -> int:
    """How many records the file holds (data lines; a CSV's header is not one)."""
    with path.open("rb") as handle:
        lines = sum(1 for raw in handle if raw.strip())
    return max(lines - 1, 0) if file_format(path) == "csv" else lines


def read_calls(path: Path) -> Iterator[Call | BadLine]:
    with path.open(encoding="utf-8", newline="") as handle:
        if file_format(path) == "csv":
            yield from _read_csv(handle)
        else:
            yield from _read_jsonl(handle)


def _read_jsonl(handle: TextIO) -> Iterator[Call | BadLine]:
    for number, raw in enumerate(handle, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            record = json.loads(text)
        except ValueError as exc:
            yield BadLine(number, f"not valid JSON: {exc}", text)
            continue
        try:
            yield _from_record(number, record)
        except ValueError as exc:
            yield BadLine(number, str(exc), text)


def _from_record(number: int, record: Any) -> Call:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "method" in record:
        return _keyword_form(number, record)
    return _wire_form(number, record)


def _keyword_form(number: int, record: dict[str, Any]) -> Call:
    kwargs = dict(record)
    method = kwargs.pop("method")
    allowed = _METHODS.get(method) if isinstance(method, str) else None
    if allowed is None:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"unknown keys for {method}: {', '.join(unknown)}")
    return Call(number, method, kwargs)


def _wire_form(number: int, record: dict[str, Any]) -> Call:
    user = record.get("user")
    kind = record.get("type")
    if kind == "alias":
        new = user if isinstance(user, dict) else {}
        return Call(
            number,
            "alias",
            {
                "previous_email": record.get("previousEmail"),
                "previous_user_id": record.get("previousUserId"),
                "email": new.get("email"),
                "user_id": new.get("userId"),
            },
        )
    if kind == "group":
        kwargs: dict[str, Any] = {
            "object_type": record.get("objectType"),
            "properties": record.get("properties", {}),
        }
        if user is not None:
            kwargs["user"] = user
        return Call(number, "group", kwargs)
    if kind is not None:
        raise ValueError(f"unknown type {kind!r} (Encharge knows 'alias' and 'group')")
    name = record.get("name")
    if name == "identify":
        return Call(number, "identify", {"user": user})
    kwargs = {"name": name, "user": user}
    if "properties" in record:
        kwargs["properties"] = record["properties"]
    if "sourceIp" in record:
        kwargs["source_ip"] = record["sourceIp"]
    return Call(number, "track", kwargs)


def _read_csv(handle: TextIO) -> Iterator[Call | BadLine]:
    """Rows become identify calls, or track calls when the `event` column is filled.

    `email` and `user_id` (or `userId`) identify the person; `user.X` columns are person
    fields and `properties.X` columns event properties; any other column is a person field
    on identify rows and an event property on track rows. Empty cells are left out.
    """
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        return
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield BadLine(number, f"expected {len(header)} columns, got {len(row)}", ",".join(row))
            continue
        cells = {key.strip(): value for key, value in zip(header, row, strict=True) if value != ""}
        yield _from_row(number, cells)


def _from_row(number: int, cells: dict[str, str]) -> Call:
    event = cells.pop("event", None) or cells.pop("name", None)
    kwargs: dict[str, Any] = {}
    user: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    for key, value in cells.items():
        if key == "email":
            kwargs["email"] = value
        elif key in ("user_id", "userId"):
            kwargs["user_id"] = value
        elif key.startswith("user."):
            user[key[5:]] = value
        elif key.startswith("properties."):
            (properties if event else user)[key[11:]] = value
        elif event:
            properties[key] = value
        else:
            user[key] = value
    if user:
        kwargs["user"] = user
    if event:
        kwargs["name"] = event
        if properties:
            kwargs["properties"] = properties
        return Call(number, "track", kwargs)
    return Call(number, "identify", kwargs)
