"""`encharge-async emulator`: serve the local Encharge emulator until Ctrl-C."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .._constants import EMULATOR_INSPECT_TOKEN_ENV, WRITE_KEY_ENV
from .._text import quote
from ._options import add_verbose, fraction, int_at_least, port, read_key_file, seconds

__all__ = ["add_emulator_parser"]


def _latency(text: str) -> float | tuple[float, float]:
    low, sep, high = text.partition("-")
    try:
        value = (float(low), float(high)) if sep else float(low)
    except ValueError:
        value = None
    bounds = value if isinstance(value, tuple) else (value, value)
    if value is None or not all(0 <= x < float("inf") for x in bounds if x is not None):
        raise argparse.ArgumentTypeError(
            f"latency is seconds (0.05) or a range (0.01-0.2), got {quote(text)}"
        )
    return value


_FAULTS = (
    "latency",
    "error_rate",
    "rate_limited_rate",
    "retry_after",
    "rate_limit",
    "max_in_flight",
    "drop_rate",
    "drop_mode",
    "slow_body",
)


def add_emulator_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "emulator",
        help="run a local Encharge Ingest API emulator",
        description="Serve a local stand-in for Encharge's Ingest API until Ctrl-C "
        "(see docs/emulator.md). Needs the extra: pip install 'encharge-async[emulator]'.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument(
        "--port", type=port, default=8787, help="0 to 65535 (default: 8787; 0: any free port)"
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--write-key",
        action="append",
        metavar="KEY",
        help="an accepted write key (repeatable; default: $ENCHARGE_WRITE_KEY, else 'dev' "
        "on loopback only)",
    )
    keys.add_argument(
        "--write-key-file",
        metavar="PATH",
        help="read the accepted write key from this file ('-': standard input)",
    )
    parser.add_argument("--seed", type=int, help="seed for reproducible faults")
    add_verbose(parser, "verbose_emulator")
    exposure = parser.add_argument_group("exposure and memory (see docs/emulator.md)")
    exposure.add_argument(
        "--inspect-token",
        help="token /_emulator/ requires (Authorization: Bearer ...); required off loopback "
        "(default: $ENCHARGE_EMULATOR_INSPECT_TOKEN)",
    )
    exposure.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests with this Host name (repeatable; '*': any)",
    )
    exposure.add_argument(
        "--max-events",
        type=int_at_least(1),
        metavar="N",
        help="accepted events kept (default 100000; oldest go)",
    )
    exposure.add_argument(
        "--max-rejected",
        type=int_at_least(1),
        metavar="N",
        help="rejected requests kept (default 10000; oldest go)",
    )
    faults = parser.add_argument_group("faults")
    faults.add_argument("--latency", type=_latency, help="seconds (0.05) or a range (0.01-0.2)")
    faults.add_argument(
        "--error-rate", type=fraction, metavar="FRACTION", help="answered 500/502/503 (0 to 1)"
    )
    faults.add_argument(
        "--rate-limited-rate",
        type=fraction,
        metavar="FRACTION",
        help="answered 429 with Retry-After (0 to 1)",
    )
    faults.add_argument(
        "--retry-after", type=int_at_least(0), metavar="SECONDS", help="Retry-After of those 429s"
    )
    faults.add_argument(
        "--rate-limit",
        type=seconds(allow_zero=False),
        metavar="PER_SECOND",
        help="requests per second, then 429",
    )
    faults.add_argument(
        "--max-in-flight",
        type=int_at_least(1),
        metavar="REQUESTS",
        help="requests handled at once, then 429 (no Retry-After)",
    )
    faults.add_argument(
        "--drop-rate", type=fraction, metavar="FRACTION", help="connections cut (0 to 1)"
    )
    faults.add_argument(
        "--drop-mode", choices=["before", "after"], help="cut before or after recording the event"
    )
    faults.add_argument(
        "--slow-body",
        type=seconds(allow_zero=True),
        metavar="SECONDS",
        help="how long a 200's body stalls",
    )
    parser.set_defaults(handler=run_emulator_command)


def run_emulator_command(args: argparse.Namespace) -> int:
    try:
        from ..emulator import Faults, run_emulator
    except ImportError as exc:
        raise ImportError(
            "the emulator needs its extra: pip install 'encharge-async[emulator]'"
        ) from exc
    if args.write_key_file is not None:
        keys = [read_key_file(args.write_key_file)]
    else:
        keys = args.write_key or [os.environ.get(WRITE_KEY_ENV) or "dev"]
    faults = Faults()
    for name in _FAULTS:
        value = getattr(args, name)
        if value is not None:
            try:
                setattr(faults, name, value)
            except (ValueError, TypeError) as exc:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag}: {exc}") from None
    inspect_token = args.inspect_token or os.environ.get(EMULATOR_INSPECT_TOKEN_ENV) or None
    limits = {
        name: getattr(args, name)
        for name in ("max_events", "max_rejected")
        if getattr(args, name) is not None
    }
    run_emulator(
        args.host,
        args.port,
        keys,
        faults=faults,
        seed=args.seed,
        inspect_token=inspect_token,
        allowed_hosts=args.allow_host,
        **limits,
    )
    return 0
