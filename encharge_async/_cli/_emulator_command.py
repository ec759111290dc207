"""`encharge-async emulator`: serve the local Encharge emulator until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_emulator_parser"]


def _latency(text: str) -> float | tuple[float, float]:
    low, sep, high = text.partition("-")
    try:
        return (float(low), float(high)) if sep else float(low)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"latency is seconds (0.05) or a range (0.01-0.2), got {text!r}"
        ) from None


def add_emulator_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "emulator",
        help="run a local Encharge Ingest API emulator",
        description="Serve a local stand-in for Encharge's Ingest API (see docs/emulator.md).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="default: 8787 (0: any free)")
    parser.add_argument(
        "--write-key",
        action="append",
        help="an accepted write key (repeatable; default: $ENCHARGE_WRITE_KEY, else 'dev' "
        "on loopback only)",
    )
    parser.add_argument("--seed", type=int, help="seed for reproducible faults")
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
        "--max-events", type=int, help="accepted events kept (default 100000; oldest go)"
    )
    exposure.add_argument(
        "--max-rejected", type=int, help="rejected requests kept (default 10000; oldest go)"
    )
    faults = parser.add_argument_group("faults")
    faults.add_argument("--latency", type=_latency, help="seconds (0.05) or a range (0.01-0.2)")
    faults.add_argument("--error-rate", type=float, help="fraction answered 500/502/503")
    faults.add_argument(
        "--rate-limited-rate", type=float, help="fraction answered 429 with Retry-After"
    )
    faults.add_argument("--retry-after", type=int, help="Retry-After seconds of those 429s")
    faults.add_argument("--rate-limit", type=float, help="requests per second, then 429")
    faults.add_argument("--drop-rate", type=float, help="fraction of connections cut")
    faults.add_argument("--drop-mode", choices=["before", "after"], help="record before a cut?")
    faults.add_argument("--slow-body", type=float, help="seconds a 200's body stalls")
    parser.set_defaults(handler=run_emulator_command)


def run_emulator_command(args: argparse.Namespace) -> int:
    import os

    try:
        from ..emulator import Faults, run_emulator
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        print(
            f"error: the emulator needs its extra: pip install 'encharge-async[emulator]' ({exc})",
            file=sys.stderr,
        )
        return 2
    from .._constants import EMULATOR_INSPECT_TOKEN_ENV

    keys = args.write_key or [os.environ.get("ENCHARGE_WRITE_KEY") or "dev"]
    inspect_token = args.inspect_token or os.environ.get(EMULATOR_INSPECT_TOKEN_ENV) or None
    limits = {
        name: getattr(args, name)
        for name in ("max_events", "max_rejected")
        if getattr(args, name) is not None
    }
    try:
        faults = Faults()
        for name in (
            "latency",
            "error_rate",
            "rate_limited_rate",
            "retry_after",
            "rate_limit",
            "drop_rate",
            "drop_mode",
            "slow_body",
        ):
            value = getattr(args, name)
            if value is not None:
                setattr(faults, name, value)
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
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
