"""How the command line shows messages and file names: escaped, on one line.

Values quoted in a message go through the library's `_text.quote`, as the client's own
messages do: one format for a shortened value everywhere.
"""

from __future__ import annotations

import re

__all__ = ["flag_names", "one_line", "path_text"]

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


def _escape(text: str) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def path_text(path: object) -> str:
    """A file name as typed, with control characters escaped (a name may hold a newline)."""
    return _escape(str(path))


def one_line(text: str, limit: int = LINE_CHARS) -> str:
    """A message on one printable line: control characters escaped, the tail cut."""
    text = _escape(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def flag_names(message: str) -> str:
    """Replace the client's keyword names (user_id, write_key=...) with the CLI's flags."""
    message = message.replace("an email or a user_id", "--email or --user-id")
    message = message.replace("email or user_id", "--email or --user-id")
    return _KEYWORDS.sub(lambda match: _KEYWORD_FLAGS[match.group(1)], message)
