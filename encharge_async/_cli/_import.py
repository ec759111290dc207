"""`encharge-async import FILE`: bulk-load JSONL or CSV, resumable, with a dead-letter file."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

import anyio

from .._client import AsyncEncharge
from .._events import Event
from .._exceptions import DeliveryError, EnchargeError, QueueFullError, ValidationError
from .._types import DropReason
from ._checkpoint import Checkpoint, CheckpointMismatch
from ._options import add_client_options, client_kwargs
from ._progress import Progress, format_duration
from ._sources import BadLine, count_records, read_calls

__all__ = ["add_import_parser"]

EXIT_INTERRUPTED = 130


def add_import_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "import",
        help="bulk-load a JSONL or CSV file of events or people",
        description=(
            "Send every line of FILE through the client, keeping each person's events in "
            'order. JSONL lines hold the wire format ({"name": ..., "user": {...}}) or '
            'the keyword form ({"method": "track", "name": ..., "email": ...}). CSV '
            "rows are identify calls, or track calls when their `event` column is filled. "
            "Interrupted imports resume from the checkpoint; lines that fail for good go "
            "to the dead-letter file with their error."
        ),
    )
    parser.add_argument("file", type=Path, help="a .jsonl (or .json lines) or .csv file")
    parser.add_argument("--checkpoint", type=Path, help="progress file (default: FILE.checkpoint)")
    parser.add_argument(
        "--dead-letter", type=Path, help="failed lines (default: FILE.dead-letter.jsonl)"
    )
    parser.add_argument(
        "--restart", action="store_true", help="ignore the checkpoint and start over"
    )
    parser.add_argument("--max-retries", type=int, default=10, help="per event (default: 10)")
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="seconds to finish in-flight events after Ctrl-C (default: 10)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    add_client_options(parser)
    parser.set_defaults(handler=run_import)


class _DeadLetter:
    """Appends one JSON line per line that failed for good."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._handle: IO[str] | None = None

    def write(self, line: int, error: str, record: Any) -> None:
        if self._handle is None:
            self._handle = self.path.open("a", encoding="utf-8")
        entry = {"line": line, "error": error, "record": record}
        self._handle.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        self._handle.flush()
        self.count += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class _Import:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.source: Path = args.file
        self.checkpoint = Checkpoint(
            args.checkpoint or self.source.with_name(self.source.name + ".checkpoint"),
            self.source,
            restart=args.restart,
        )
        self.dead = _DeadLetter(
            args.dead_letter or self.source.with_name(self.source.name + ".dead-letter.jsonl")
        )
        self.id_prefix = f"import-{self.checkpoint.fingerprint[:16]}-"
        self.line_of: dict[str, int] = {}
        self.delivered = self.failed = self.bad = self.skipped = self.read = 0
        self.interrupted = False
        self.stop = anyio.Event()
        self.total = count_records(self.source)
        self.progress = Progress(self.total) if not args.quiet else None

    # Hooks: called by the client's worker as each event ends.
    def on_delivered(self, event: Event) -> None:
        line = self.line_of.pop(event.message_id, None)
        if line is not None:
            self.checkpoint.mark(line)
            self.delivered += 1

    def on_error(self, error: DeliveryError) -> None:
        line = self.line_of.pop(error.message_id, None)
        if line is not None:
            record = error.event.payload if error.event is not None else None
            self.dead.write(line, str(error), record)
            self.checkpoint.mark(line)
            self.failed += 1

    def on_drop(self, event: Event, reason: DropReason) -> None:
        # Only an interrupted shutdown drops here: the line stays undone and is resent
        # (with the same message id) by the next run.
        self.line_of.pop(event.message_id, None)

    def bad_line(self, line: int, error: str, record: Any) -> None:
        print(f"{self.source}:{line}: skipped: {error}", file=sys.stderr)
        self.dead.write(line, error, record)
        self.checkpoint.mark(line)
        self.bad += 1

    def show(self, client: AsyncEncharge, *, force: bool = False) -> None:
        if self.progress is not None:
            done = self.skipped + self.bad + self.delivered + self.failed
            self.progress.update(
                done,
                force=force,
                delivered=self.delivered,
                failed=self.failed + self.bad,
                retried=client.stats.retried,
            )

    async def run(self) -> int:
        client = AsyncEncharge(
            **client_kwargs(self.args),
            # A short queue: reading keeps just ahead of delivery, so Ctrl-C stops promptly
            # and the checkpoint stays close to what was sent.
            overflow="block",
            max_queue_size=4 * self.args.concurrency,
            max_retries=self.args.max_retries,
            shutdown_timeout=self.args.shutdown_timeout,
            on_delivered=self.on_delivered,
            on_error=self.on_error,
            on_drop=self.on_drop,
        )
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_signals, tg.cancel_scope)
            async with client:
                await self._feed(client)
                while self.line_of and not self.stop.is_set():
                    await client.flush(timeout=0.2)
                    self.show(client)
            tg.cancel_scope.cancel()
        self.show(client, force=True)
        if self.progress is not None:
            self.progress.finish()
        self.checkpoint.close()
        self.dead.close()
        self._summary(client, time.monotonic() - started)
        if self.interrupted:
            return EXIT_INTERRUPTED
        return 1 if self.failed or self.bad else 0

    async def _feed(self, client: AsyncEncharge) -> None:
        done = self.checkpoint.done
        for item in read_calls(self.source):
            if self.stop.is_set():
                return
            self.read += 1
            if item.line in done:
                self.skipped += 1
                continue
            if isinstance(item, BadLine):
                self.bad_line(item.line, item.error, item.raw)
                continue
            message_id = f"{self.id_prefix}{item.line}"
            self.line_of[message_id] = item.line
            method = getattr(client, item.method)
            while True:
                try:
                    await method(**item.kwargs, message_id=message_id, timeout=0.5)
                    break
                except QueueFullError:
                    # The queue is full: wait for room, but stay responsive to Ctrl-C.
                    if self.stop.is_set():
                        self.line_of.pop(message_id, None)
                        return
                except (ValidationError, TypeError) as exc:
                    self.line_of.pop(message_id, None)
                    self.bad_line(item.line, str(exc), item.kwargs)
                    break
            self.show(client)

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if self.stop.is_set():
                    scope.cancel()  # a second Ctrl-C: stop now
                    return
                self.interrupted = True
                self.stop.set()
                print(
                    "\ninterrupted: finishing in-flight events (Ctrl-C again to stop now)",
                    file=sys.stderr,
                )

    def _summary(self, client: AsyncEncharge, elapsed: float) -> None:
        stats = client.stats
        left = self.total - (self.skipped + self.bad + self.delivered + self.failed)
        rate = (self.delivered + self.failed) / elapsed if elapsed > 0 else 0.0
        lines = [
            f"imported {self.source} in {format_duration(elapsed)} ({rate:,.0f} events/s)",
            f"  delivered   {self.delivered:>9,}",
            f"  failed      {self.failed:>9,}",
            f"  bad lines   {self.bad:>9,}",
            f"  skipped     {self.skipped:>9,}  (done by an earlier run)",
            f"  retried     {stats.retried:>9,}",
            f"  left        {max(left, 0):>9,}",
        ]
        if self.dead.count:
            lines.append(f"failed and bad lines were written to {self.dead.path}")
        if self.interrupted or left > 0:
            lines.append("not finished: run the same command again to resume from the checkpoint")
        print("\n".join(lines))


def run_import(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"error: {args.file}: no such file", file=sys.stderr)
        return 2
    try:
        job = _Import(args)
        return anyio.run(job.run)
    except (CheckpointMismatch, EnchargeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
