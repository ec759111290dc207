"""Read an import file (JSONL or CSV) into client calls, one per record, bad ones flagged.

Nothing in a file can stop the reading: a line too long (`max_line_bytes`), not UTF-8,
not JSON, nested too deeply or of the wrong shape becomes a `BadLine` with the reason, and
the next record is read as usual. Memory stays bounded by `max_line_bytes` whatever the
file holds: an oversized line is skipped in chunks and only its size and a prefix kept.

CSV is read as people export it: records rather than lines (a quoted cell may hold line
breaks), with or without a UTF-8 byte-order mark (Excel), CRLF or LF, the delimiter sniffed
from the header (`,`, `;` or a tab) unless given, and the identifying columns recognised
whatever their case and separators (Email, E-mail, user_id, User ID, userId).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

from .._exceptions import ConfigurationError
from .._text import quote
from ._text import path_text

__all__ = [
    "DEAD_LETTER_KEY",
    "BadLine",
    "Call",
    "CsvLayout",
    "Source",
    "file_format",
    "from_record",
    "parse_json",
]

# Dead-letter entries carry their origin under this key; `import` strips it (replay).
DEAD_LETTER_KEY = "_dead_letter"
PREFIX_BYTES = 80  # what a dead-letter entry keeps of an oversized line
_CHUNK = 64 * 1024
_BOM = b"\xef\xbb\xbf"
DELIMITERS = (",", ";", "\t")

_METHODS = {
    "track": {"name", "email", "user_id", "user", "properties", "source_ip"},
    "identify": {"email", "user_id", "user"},
    "alias": {"previous_email", "previous_user_id", "email", "user_id"},
    "group": {"object_type", "properties", "email", "user_id", "user"},
}

# Header names, lower-cased with everything but letters and digits removed.
_EMAIL_COLUMNS = {"email", "emailaddress"}
_USER_ID_COLUMNS = {"userid"}
_EVENT_COLUMNS = {"event", "eventname"}


@dataclass(frozen=True, slots=True)
class Call:
    """One client call read from the record starting on line `line`.

    `record` is the same call as a JSON object that `import` reads back (the dead-letter
    file holds it when the call fails for good).
    """

    line: int
    method: str
    kwargs: dict[str, Any]
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadLine:
    """A record that could not become a call; `detail` is what the dead-letter file keeps.

    `detail` holds the record (a JSON object, when it parsed as one), or the line's text,
    or, for an oversized line, only its size and a prefix: never a copy of it.
    """

    line: int
    error: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CsvLayout:
    delimiter: str
    header: list[str]


@dataclass(frozen=True, slots=True)
class _Line:
    """A physical line: its bytes, or (when over the cap) its size and a prefix only."""

    number: int
    data: bytes | None
    size: int
    prefix: bytes
    odd_quotes: bool = False  # for an oversized line: whether it holds an odd number of "


def file_format(path: Path) -> str:
    return "csv" if path.suffix.lower() in (".csv", ".tsv") else "jsonl"


def _physical_lines(handle: IO[bytes], cap: int) -> Iterator[_Line]:
    number = 0
    while True:
        raw = handle.readline(cap + 1)
        if not raw:
            return
        number += 1
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if len(raw) <= cap or raw.endswith(b"\n"):
            yield _Line(number, raw, len(raw), b"")
            continue
        # Over the cap: read the rest of the line in chunks, keeping nothing but counts.
        size, quotes, prefix = len(raw), raw.count(b'"'), raw[:PREFIX_BYTES]
        while not raw.endswith(b"\n"):
            raw = handle.readline(_CHUNK)
            if not raw:
                break
            size += len(raw)
            quotes += raw.count(b'"')
        yield _Line(number, None, size, prefix, odd_quotes=quotes % 2 == 1)


def _oversized(line: int, size: int, prefix: bytes, cap: int) -> BadLine:
    return BadLine(
        line,
        f"{size:,} bytes, over the limit of {cap:,} (--max-line-bytes)",
        {"size": size, "prefix": prefix.decode("utf-8", "replace")},
    )


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str) -> Any:
    """json.loads without NaN/Infinity (not JSON: they would be written back invalid)."""
    return json.loads(text, parse_constant=_reject_constant)


class Source:
    """An import file: `count()` its records, `calls()` to read them."""

    def __init__(self, path: Path, *, max_line_bytes: int, delimiter: str | None = None) -> None:
        self.path = path
        self.format = file_format(path)
        self.max_line_bytes = max_line_bytes
        self.layout: CsvLayout | None = None
        if self.format == "csv":
            self.layout = self._csv_layout(delimiter)

    def count(self) -> int:
        """How many records the file holds (blank ones and a CSV's header are not)."""
        return sum(1 for _ in self._records())

    def calls(self) -> Iterator[Call | BadLine]:
        for line, record in self._records():
            if isinstance(record, BadLine):
                yield record
            elif isinstance(record, str):
                yield _from_text(line, record)
            else:
                assert self.layout is not None
                yield _from_row(line, self.layout.header, record)

    def _records(self) -> Iterator[tuple[int, str | list[str] | BadLine]]:
        with self.path.open("rb") as handle:
            lines = _physical_lines(handle, self.max_line_bytes)
            if self.layout is None:
                yield from self._jsonl_records(lines)
            else:
                yield from self._csv_records(lines, self.layout)

    # -- JSONL ----------------------------------------------------------------------------------

    def _jsonl_records(self, lines: Iterator[_Line]) -> Iterator[tuple[int, str | BadLine]]:
        for line in lines:
            if line.data is None:
                yield (
                    line.number,
                    _oversized(line.number, line.size, line.prefix, self.max_line_bytes),
                )
                continue
            try:
                text = line.data.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield (
                    line.number,
                    BadLine(
                        line.number,
                        f"not valid UTF-8 (byte {exc.start + 1})",
                        {"raw": line.data.decode("utf-8", "backslashreplace").strip()},
                    ),
                )
                continue
            text = text.strip()
            if text:
                yield line.number, text

    # -- CSV ------------------------------------------------------------------------------------

    def _csv_layout(self, delimiter: str | None) -> CsvLayout:
        with self.path.open("rb") as handle:
            for line in _physical_lines(handle, self.max_line_bytes):
                if line.data is None:
                    raise ConfigurationError(
                        f"{path_text(self.path)}: the header line is {line.size:,} bytes, over "
                        f"--max-line-bytes {self.max_line_bytes:,}"
                    )
                text = line.data.decode("utf-8", "replace")
                if text.strip():
                    break
            else:
                return CsvLayout(delimiter or ",", [])
        chosen = delimiter or _sniff(text)
        header = next(csv.reader([text], delimiter=chosen), [])
        columns = [_column(name) for name in header]
        if not {"email", "user_id"} & set(columns):
            found = ", ".join(quote(name.strip(), 24) for name in header[:12])
            more = f" and {len(header) - 12} more" if len(header) > 12 else ""
            shown = "tab" if chosen == "\t" else repr(chosen)
            raise ConfigurationError(
                f"{path_text(self.path)}: the header has no email or user id column "
                f"(found {found}{more}; split at {shown}). Name one column email or "
                "user_id, or pass --delimiter"
            )
        return CsvLayout(chosen, columns)

    def _csv_records(
        self, lines: Iterator[_Line], layout: CsvLayout
    ) -> Iterator[tuple[int, list[str] | BadLine]]:
        feed = _CsvFeed(lines, layout.delimiter, self.max_line_bytes)
        reader = csv.reader(feed, delimiter=layout.delimiter)
        limit = csv.field_size_limit()
        # A cell may be as long as a line may; longer ones never reach the csv module.
        csv.field_size_limit(max(limit, self.max_line_bytes))
        try:
            header_seen = False
            while True:
                feed.start_record()
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    if header_seen:
                        yield (
                            feed.first_line,
                            BadLine(
                                feed.first_line, f"unreadable CSV: {exc}", {"raw": feed.preview()}
                            ),
                        )
                    continue
                if not header_seen:
                    header_seen = any(cell.strip() for cell in row)
                    continue
                if feed.problem is not None:
                    yield feed.first_line, feed.problem
                elif not any(cell.strip() for cell in row):
                    continue
                elif len(row) != len(layout.header):
                    yield (
                        feed.first_line,
                        BadLine(
                            feed.first_line,
                            f"expected {len(layout.header)} columns, got {len(row)}",
                            {"raw": feed.preview()},
                        ),
                    )
                else:
                    yield feed.first_line, row
        finally:
            csv.field_size_limit(limit)


def _sniff(header: str) -> str:
    """The delimiter of a header line: whichever of , ; tab it holds most (outside quotes)."""
    unquoted = re.sub(r'"[^"]*"', "", header)
    counts = {delimiter: unquoted.count(delimiter) for delimiter in DELIMITERS}
    best = max(DELIMITERS, key=lambda delimiter: counts[delimiter])
    return best if counts[best] else ","


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _column(name: str) -> str:
    """A header cell as the reader uses it: email, user_id, event, user.X, properties.X, X."""
    name = name.strip()
    normal = _normal(name)
    if normal in _EMAIL_COLUMNS:
        return "email"
    if normal in _USER_ID_COLUMNS:
        return "user_id"
    if normal in _EVENT_COLUMNS:
        return "event"
    lowered = name.lower()
    for prefix in ("user.", "properties."):
        if lowered.startswith(prefix) and len(name) > len(prefix):
            return prefix + name[len(prefix) :]
    return name


class _CsvFeed:
    """Feeds the csv module decoded lines, noting what goes wrong within each record.

    A line that is over the cap, or that makes its record over the cap, is replaced by a
    stand-in with the same effect on the quoting (a lone `"` when it holds an odd number of
    them), so the records after it are read as they are.
    """

    def __init__(self, lines: Iterator[_Line], delimiter: str, cap: int) -> None:
        self._lines = lines
        self._cap = cap
        self._delimiter = delimiter
        self.first_line = 0
        self.problem: BadLine | None = None
        self._size = 0
        self._text: list[str] = []
        self._last = 0

    def start_record(self) -> None:
        self.first_line = self._last + 1
        self.problem = None
        self._size = 0
        self._text = []

    def preview(self) -> str:
        return "".join(self._text)[: PREFIX_BYTES * 4].rstrip("\r\n")

    def __iter__(self) -> _CsvFeed:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self._last = line.number
        if not self._text and self._size == 0:
            self.first_line = line.number
        self._size += line.size
        if line.data is None or self._size > self._cap:
            if self.problem is None or not self.problem.error.startswith("record"):
                prefix = line.prefix if line.data is None else line.data[:PREFIX_BYTES]
                start = "".join(self._text).encode()[:PREFIX_BYTES] or prefix
                self.problem = BadLine(
                    self.first_line,
                    f"record of {self._size:,}+ bytes, over the limit of {self._cap:,} "
                    "(--max-line-bytes; an unclosed quote?)",
                    {"size": self._size, "prefix": start.decode("utf-8", "replace")},
                )
            odd = line.odd_quotes if line.data is None else line.data.count(b'"') % 2 == 1
            self._text = []
            return '"\n' if odd else "\n"
        try:
            text = line.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            text = line.data.decode("utf-8", "replace")
            if self.problem is None:
                self.problem = BadLine(
                    self.first_line,
                    f"not valid UTF-8 (line {line.number}, byte {exc.start + 1})",
                    {"raw": line.data.decode("utf-8", "backslashreplace").rstrip("\r\n")},
                )
        if self.problem is None or not self.problem.error.startswith("record"):
            self._text.append(text)
        return text


# -- records into calls -------------------------------------------------------------------------


def _from_text(number: int, text: str) -> Call | BadLine:
    try:
        record = parse_json(text)
    except RecursionError:
        return BadLine(
            number, "nested too deeply to read", {"size": len(text), "prefix": text[:PREFIX_BYTES]}
        )
    except ValueError as exc:
        return BadLine(number, f"not valid JSON: {exc}", {"raw": text})
    if not isinstance(record, dict):
        return BadLine(number, f"expected a JSON object, got {_json_type(record)}", {"raw": text})
    return from_record(number, record)


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def from_record(number: int, record: dict[str, Any]) -> Call | BadLine:
    """The call a JSON object describes (wire format, or keyword form with `method`)."""
    origin = record.pop(DEAD_LETTER_KEY, None)
    if not record:
        error = origin.get("error") if isinstance(origin, dict) else None
        return BadLine(
            number,
            "a dead-letter entry with no event in it (the original line was unreadable"
            + (f": {error}" if isinstance(error, str) else "")
            + "); fix it by hand from its raw text",
            {DEAD_LETTER_KEY: origin},
        )
    try:
        if "method" in record:
            return _keyword_form(number, record)
        return _wire_form(number, record)
    except ValueError as exc:
        return BadLine(number, str(exc), {"record": record})


def _keyword_form(number: int, record: dict[str, Any]) -> Call:
    kwargs = dict(record)
    method = kwargs.pop("method")
    allowed = _METHODS.get(method) if isinstance(method, str) else None
    if allowed is None:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {quote(method)}")
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"unknown keys for {method}: {', '.join(map(quote, unknown))}")
    return Call(number, method, kwargs, record)


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
            record,
        )
    if kind == "group":
        kwargs: dict[str, Any] = {
            "object_type": record.get("objectType"),
            "properties": record.get("properties", {}),
        }
        if user is not None:
            kwargs["user"] = user
        return Call(number, "group", kwargs, record)
    if kind is not None:
        raise ValueError(f"unknown type {quote(kind)} (Encharge knows 'alias' and 'group')")
    name = record.get("name")
    if name == "identify":
        return Call(number, "identify", {"user": user}, record)
    kwargs = {"name": name, "user": user}
    if "properties" in record:
        kwargs["properties"] = record["properties"]
    if "sourceIp" in record:
        kwargs["source_ip"] = record["sourceIp"]
    return Call(number, "track", kwargs, record)


def _from_row(number: int, header: list[str], row: list[str]) -> Call:
    """A CSV row: an identify call, or a track call when its `event` cell is filled.

    `email` and `user_id` identify the person (always as text); `user.X` columns are person
    fields and `properties.X` columns event properties; any other column is a person field
    on identify rows and an event property on track rows. Empty cells are left out.
    """
    cells: dict[str, str] = {}
    for key, value in zip(header, row, strict=True):
        if value != "" and key not in cells:
            cells[key] = value
    event = cells.pop("event", None)
    kwargs: dict[str, Any] = {}
    user: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    for key, value in cells.items():
        if key in ("email", "user_id"):
            kwargs[key] = value.strip()
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
    method = "identify"
    if event:
        method = "track"
        kwargs["name"] = event
        if properties:
            kwargs["properties"] = properties
    return Call(number, method, kwargs, {"method": method, **kwargs})
