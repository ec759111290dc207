"""How the command line shows values it did not write: short, escaped, on one line."""

from __future__ import annotations

import re

__all__ = ["flag_names", "one_line", "path_text", "shorten"]

SHORTEN_CHARS = 40
LINE_CHARS = 300

# The client's messages name its keywords; on the command line the user typed flags.
_KEYWORD_FLAGS = {
    "write_key": "--write-key",
    "previous_email": "--previous-email",
    "previous_user_id": "--previous-user-id",
    "user_id": "--user-id",
    "source_ip": "--source-ip",
    "object_type": "OBJECT_TYPE",
    "max_concurrency": "--concurrency",
    "max_retries": "--max-retries",
    "shutdown_timeout": "--shutdown-timeout",
}
_KEYWORDS = re.compile(r"\b(" + "|".join(_KEYWORD_FLAGS) + r")\b(=\.\.\.)?")


def shorten(value: object, limit: int = SHORTEN_CHARS) -> str:
    """`repr` of a value (for a str: escaped, quoted), cut to a prefix and the length.

    A value read from a file or typed by someone else may be huge or hold CR/LF or
    terminal escapes: an error message shows enough of it to recognise, never all of it.
    """
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else _escape(text)
    prefix = repr(text[:limit]) if isinstance(value, str) else _escape(text[:limit])
    return f"{prefix}... ({len(text):,} chars)"


def _escape(text: str) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def path_text(path: object) -> str:
    """A file name as typed, with control characters escaped (a name may hold a newline)."""
    return _escape(str(path))


def one_line(text: str, limit: int = LINE_CHARS) -> str:
    """A message on one printable line: control characters escaped, the tail cut."""
    text = _escape(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} chars)"


def flag_names(message: str) -> str:
    """Replace the client's keyword names (user_id, write_key=...) with the CLI's flags."""
    message = message.replace("an email or a user_id", "--email or --user-id")
    message = message.replace("email or user_id", "--email or --user-id")
    return _KEYWORDS.sub(lambda match: _KEYWORD_FLAGS[match.group(1)], message)
