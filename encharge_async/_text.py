"""Values as they may appear in errors and log lines: shortened and escaped.

Whatever a caller or a server hands us can end up quoted in an exception or a log line. Quoted
through these functions it shows a prefix and its length, never the whole value, and no raw
CR, LF or other control character, so it can neither flood a log nor forge a line in it.
"""

from __future__ import annotations

import reprlib

from ._constants import QUOTED_VALUE_CHARS

__all__ = ["escape", "quote"]

_short_repr = reprlib.Repr()
_short_repr.maxlevel = 3
_short_repr.maxstring = _short_repr.maxother = QUOTED_VALUE_CHARS


def quote(value: object, limit: int = QUOTED_VALUE_CHARS) -> str:
    """`value`'s repr, escaped, cut to about `limit` characters with the length of the whole.

    Strings and bytes show their first `limit` characters and their length when longer; other
    values a bounded repr (reprlib: bounded depth too, so a deeply nested value cannot turn
    the message itself into a RecursionError).
    """
    if isinstance(value, (str, bytes, bytearray)):
        if len(value) <= limit:
            return repr(value)
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{value[:limit]!r}... ({len(value)} {unit})"
    text = escape(_short_repr.repr(value))
    return text if len(text) <= 2 * limit else f"{text[: 2 * limit - 3]}..."


def escape(text: str) -> str:
    """`text` with its non-printable characters (CR, LF, ESC, U+2028, ...) escaped."""
    if text.isprintable():
        return text
    return repr(text)[1:-1]
