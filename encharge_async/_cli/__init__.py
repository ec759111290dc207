"""The `encharge-async` command line: send, import, demo, emulator."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .._version import __version__
from ._demo import add_demo_parser
from ._emulator_command import add_emulator_parser
from ._import import add_import_parser
from ._send import add_send_parser

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="encharge-async",
        description="Send events to Encharge's Ingest API, bulk-import files, or run a local "
        "emulator. The write key comes from --write-key or $ENCHARGE_WRITE_KEY.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log the client's work (-vv: debug)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_send_parser(subparsers)
    add_import_parser(subparsers)
    add_demo_parser(subparsers)
    add_emulator_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose > 1 else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    status: int = args.handler(args)
    return status
