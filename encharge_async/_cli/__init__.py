"""The `encharge-async` command line: send, import, demo, emulator.

Exit status: 0 success; 1 the command ran but something was refused (an event, or lines
dead-lettered by an import); 2 it could not run (a bad option, an unusable file, a refused
write key, Encharge unreachable), with one line on stderr (a traceback only with -v);
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from .._version import __version__
from ._demo import add_demo_parser
from ._emulator_command import add_emulator_parser
from ._import import add_import_parser
from ._options import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CliParser, add_verbose
from ._send import add_send_parser
from ._text import one_line

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_USAGE", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="encharge-async",
        description="Send events to Encharge's Ingest API, bulk-import files, or run a local "
        "emulator. The write key comes from --write-key-file, $ENCHARGE_WRITE_KEY or "
        "--write-key (visible in `ps`).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_verbose(parser, "verbose")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_send_parser(subparsers)
    add_import_parser(subparsers)
    add_demo_parser(subparsers)
    add_emulator_parser(subparsers)
    return parser


def _verbosity(args: argparse.Namespace) -> int:
    return sum(value for name, value in vars(args).items() if name.startswith("verbose"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    verbose = _verbosity(args)
    if verbose:
        logging.basicConfig(
            level=logging.DEBUG if verbose > 1 else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    elif getattr(args, "handler_reports_outcomes", False):
        # `send` and `import` say what became of the events in their own words (one line,
        # counters): the client's own warnings would repeat them (they show with -v).
        logging.getLogger("encharge_async").addHandler(logging.NullHandler())
    try:
        status: int = args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        message = str(exc) or type(exc).__name__
        if not isinstance(exc, (ValueError, OSError, ImportError, RuntimeError)):
            message = f"{type(exc).__name__}: {message} (run with -v for the traceback)"
        print(f"error: {one_line(message)}", file=sys.stderr)
        return EXIT_USAGE
    return status
