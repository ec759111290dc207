"""Options and value parsing shared by the subcommands."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .._constants import DEFAULT_MAX_CONCURRENCY, ENDPOINT_ENV, WRITE_KEY_ENV

__all__ = ["add_client_options", "client_kwargs", "parse_assignments"]


def add_client_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--write-key",
        help=f"the Encharge write key (default: ${WRITE_KEY_ENV}); never printed",
    )
    group.add_argument(
        "--endpoint", help=f"the Ingest API URL (default: ${ENDPOINT_ENV}, else Encharge's)"
    )
    group.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per request (default: 10)"
    )
    group.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_MAX_CONCURRENCY,
        help=f"requests in flight at most (default: {DEFAULT_MAX_CONCURRENCY})",
    )


def client_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "write_key": args.write_key,
        "endpoint": args.endpoint,
        "timeout": args.timeout,
        "max_concurrency": args.concurrency,
    }


def parse_value(text: str) -> Any:
    """A JSON value when the text parses as one (3, true, null, [1]), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignments(items: list[str] | None, option: str) -> dict[str, Any]:
    """Turn ["plan=Premium", "seats=3"] into {"plan": "Premium", "seats": 3}."""
    result: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{option} expects key=value, got {item!r}")
        result[key] = parse_value(value)
    return result
