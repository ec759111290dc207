"""Options, argument types and value parsing shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from .._constants import DEFAULT_MAX_CONCURRENCY, DEFAULT_TIMEOUT, ENDPOINT_ENV, WRITE_KEY_ENV
from .._exceptions import ConfigurationError, DeliveryError
from .._text import quote
from ._text import one_line

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "CliParser",
    "add_client_options",
    "add_key_options",
    "add_verbose",
    "cannot_go_on",
    "client_kwargs",
    "fraction",
    "int_at_least",
    "parse_assignments",
    "parse_value",
    "port",
    "read_key_file",
    "seconds",
    "write_key",
]

# Exit statuses, the same for every command (docs/cli.md lists them).
EXIT_FAILED = 1  # it ran, but something was refused or dead-lettered
EXIT_USAGE = 2  # it could not run: bad option, unusable file, key refused, unreachable
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM

# Refusals that are the event's own fault (its content). Any other 4xx (a wrong --endpoint
# answers 404, a proxy 407...) would refuse every event alike, as would a refused key
# (401/403) or an unreachable Encharge (no answer, 5xx, 429): the command cannot do its job.
_THE_EVENTS_FAULT = frozenset({400, 409, 413, 422})


def cannot_go_on(error: DeliveryError) -> str | None:
    """Why no event can be delivered, judged from one that was not (a one-line message);
    None when the refusal was about the event itself."""
    status = error.status
    if status in _THE_EVENTS_FAULT:
        return None
    if status == 401 or status == 403:
        return (
            f"Encharge refused the write key (HTTP {status}); check --write-key-file, "
            "$ENCHARGE_WRITE_KEY or --write-key"
        )
    if status is not None and status < 500 and status not in (408, 429):
        return (
            f"Encharge answered HTTP {status} ({one_line(error.reason, 120)}), which is "
            "not about the event itself; check --endpoint"
        )
    return f"could not deliver to Encharge: {one_line(error.reason, 120)}"


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def add_verbose(parser: argparse.ArgumentParser, dest: str) -> None:
    """-v accepted after a subcommand too; main() adds up every level's count."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        dest=dest,
        help="log the client's work, and show tracebacks (-vv: debug)",
    )


def int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number, got {quote(text)}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def port(text: str) -> int:
    value = int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {quote(text)}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {quote(text)}")
    return value


def seconds(*, allow_zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _number(text)
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"seconds must be {bound}, got {quote(text)}")
        return value

    parse.__name__ = "seconds"
    return parse


def fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a fraction is 0 to 1, got {quote(text)}")
    return value


def add_key_options(group: Any, *, help_key: str) -> None:
    keys = group.add_mutually_exclusive_group()
    keys.add_argument("--write-key", metavar="KEY", help=help_key)
    keys.add_argument(
        "--write-key-file",
        metavar="PATH",
        help="read the write key from this file ('-': standard input); "
        "unlike --write-key it does not show in `ps`",
    )


def add_client_options(parser: argparse.ArgumentParser, *, concurrency: bool = True) -> None:
    group = parser.add_argument_group("connection")
    add_key_options(
        group,
        help_key=f"the Encharge write key (default: ${WRITE_KEY_ENV}); never printed. "
        "Visible to other users in `ps`: prefer --write-key-file or the variable",
    )
    group.add_argument(
        "--endpoint", help=f"the Ingest API URL (default: ${ENDPOINT_ENV}, else Encharge's)"
    )
    group.add_argument(
        "--timeout",
        type=seconds(allow_zero=False),
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"per request (default: {DEFAULT_TIMEOUT:g})",
    )
    if concurrency:
        group.add_argument(
            "--concurrency",
            type=int_at_least(1),
            default=DEFAULT_MAX_CONCURRENCY,
            metavar="N",
            help=f"requests in flight at most (default: {DEFAULT_MAX_CONCURRENCY})",
        )


def read_key_file(path: str) -> str:
    """A write key from a file (or stdin for "-"), surrounding whitespace stripped."""
    name = "standard input" if path == "-" else quote(path)
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigurationError(f"--write-key-file: cannot read {name}: {reason}") from None
    key = text.strip()
    if not key:
        raise ConfigurationError(f"--write-key-file: {name} is empty")
    return key


def write_key(args: argparse.Namespace) -> str | None:
    if getattr(args, "write_key_file", None) is not None:
        return read_key_file(args.write_key_file)
    key: str | None = args.write_key
    return key


def client_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "write_key": write_key(args),
        "endpoint": args.endpoint,
        "timeout": args.timeout,
    }
    if hasattr(args, "concurrency"):
        kwargs["max_concurrency"] = args.concurrency
    return kwargs


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(name)


def parse_value(text: str) -> Any:
    """A JSON value when the text parses as one (3, true, null, [1]), else the text itself.

    NaN and Infinity are not JSON: they stay text.
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return text


def parse_assignments(
    items: list[str] | None, option: str, *, text_keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Turn ["plan=Premium", "seats=3"] into {"plan": "Premium", "seats": 3}.

    Keys in `text_keys` (identifiers) keep their value as text.
    """
    result: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"{option} expects KEY=VALUE, got {quote(item)}")
        result[key] = value if key in text_keys else parse_value(value)
    return result
