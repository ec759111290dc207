"""`encharge-async import FILE`: bulk-load JSONL or CSV, resumable, with a dead-letter file.

What is checkpointed is only what is settled: a delivered line, or a line refused for a
reason of its own (unreadable, invalid, or refused by Encharge for its content). When the
write key is refused, the endpoint is wrong or Encharge cannot be reached, every line would
fail the same way: the import stops at once (exit status 2) without marking those lines,
and the same command run again delivers them.
"""

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
from .._constants import CLI_MAX_LINE_BYTES, DEFAULT_MAX_RETRIES, DEFAULT_SHUTDOWN_TIMEOUT
from .._events import Event
from .._exceptions import DeliveryError, QueueFullError, ValidationError
from .._text import quote
from .._types import DropReason
from ._checkpoint import Checkpoint
from ._files import open_private
from ._options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    add_client_options,
    add_verbose,
    cannot_go_on,
    client_kwargs,
    int_at_least,
    seconds,
)
from ._progress import Counters, Progress, format_duration
from ._sources import DEAD_LETTER_KEY, BadLine, Call, Source
from ._text import one_line, path_text

__all__ = ["add_import_parser"]

_ENQUEUE_WAIT = 0.5  # seconds between checks for Ctrl-C while the queue is full


def _delimiter(text: str) -> str:
    named = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";"}
    value = named.get(text.lower(), text)
    if len(value) != 1 or value in '"\r\n':
        raise argparse.ArgumentTypeError(
            f"a delimiter is one character (, ; tab |), got {quote(text)}"
        )
    return value


def add_import_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "import",
        help="bulk-load a JSONL or CSV file of events or people",
        description=(
            "Send every record of FILE through the client, keeping each person's events in "
            'order. JSONL lines hold the wire format ({"name": ..., "user": {...}}) or '
            'the keyword form ({"method": "track", "name": ..., "email": ...}); a '
            "dead-letter file is JSONL of this kind and can be imported as it is. CSV rows "
            "are identify calls, or track calls when their event column is filled. "
            "Interrupted imports resume from the checkpoint. Exit status: 0 all delivered, "
            "1 some lines dead-lettered (by this run or an earlier one), 2 could not run "
            "(nothing more is marked done: fix the cause and run it again), 130 interrupted."
        ),
    )
    parser.add_argument("file", type=Path, help="a .jsonl (JSON lines) or .csv file")
    parser.add_argument(
        "--checkpoint", type=Path, metavar="PATH", help="progress file (default: FILE.checkpoint)"
    )
    parser.add_argument(
        "--dead-letter",
        type=Path,
        metavar="PATH",
        help="lines refused for good, as importable JSONL (default: FILE.dead-letter.jsonl)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="ignore the checkpoint and start over, with a fresh dead-letter file",
    )
    parser.add_argument(
        "--delimiter",
        type=_delimiter,
        metavar="CHAR",
        help="the CSV delimiter (default: sniffed from the header among , ; and tab)",
    )
    parser.add_argument(
        "--max-line-bytes",
        type=int_at_least(1),
        default=CLI_MAX_LINE_BYTES,
        metavar="N",
        help="a longer line (CSV record) is dead-lettered by reference, never read whole "
        f"(default: {CLI_MAX_LINE_BYTES:,}, the client's largest event)",
    )
    parser.add_argument(
        "--max-retries",
        type=int_at_least(0),
        default=DEFAULT_MAX_RETRIES,
        metavar="N",
        help=f"per event (default: {DEFAULT_MAX_RETRIES})",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=seconds(allow_zero=True),
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        metavar="SECONDS",
        help=f"to finish in-flight events after Ctrl-C (default: {DEFAULT_SHUTDOWN_TIMEOUT:g})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    add_client_options(parser)
    add_verbose(parser, "verbose_import")
    parser.set_defaults(handler=run_import, handler_reports_outcomes=True)


class _DeadLetter:
    """Appends one importable JSON object per line refused for good.

    Each entry is the record itself (so `import` replays it) plus `_dead_letter`: where it
    came from and why it failed. A line that could not be read keeps its text (`raw`), or
    for an oversized line only its size and a prefix.
    """

    def __init__(self, path: Path, source: Path, *, fresh: bool) -> None:
        self.path = path
        self.source = str(source)
        self.count = 0
        self.fresh = fresh
        # Opened now, so that a symlink in its place stops the import before anything is
        # sent. A fresh run truncates: an earlier run's entries do not belong to this one.
        self._handle: IO[str] | None = open_private(path, "w" if fresh else "a")

    def write(self, line: int, error: str, record: dict[str, Any] | None, **detail: Any) -> None:
        origin = {"source": self.source, "line": line, "error": error, **detail}
        entry = {**(record or {}), DEAD_LETTER_KEY: origin}
        try:
            text = json.dumps(entry, ensure_ascii=False, allow_nan=False)
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes
            text = json.dumps(entry, allow_nan=False)
        except (ValueError, TypeError, RecursionError):
            origin["note"] = "the record could not be written back as JSON"
            text = json.dumps({DEAD_LETTER_KEY: origin}, default=repr)
        assert self._handle is not None
        self._handle.write(text + "\n")
        self._handle.flush()
        self.count += 1

    def close(self) -> None:
        if self._handle is None:
            return
        self._handle.close()
        self._handle = None
        if self.fresh and not self.count:
            # Nothing to report: leave no empty file behind (unlink never follows a link).
            self.path.unlink(missing_ok=True)


class _Import:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.source_path: Path = args.file
        self.source = Source(
            args.file, max_line_bytes=args.max_line_bytes, delimiter=args.delimiter
        )
        self.total = self.source.count()
        # Built before the checkpoint is touched: a missing key changes nothing on disk.
        self.client = AsyncEncharge(
            **client_kwargs(args),
            # A short queue: reading keeps just ahead of delivery, so Ctrl-C stops promptly
            # and the checkpoint stays close to what was sent.
            overflow="block",
            max_queue_size=4 * args.concurrency,
            max_retries=args.max_retries,
            shutdown_timeout=args.shutdown_timeout,
            on_delivered=self.on_delivered,
            on_error=self.on_error,
            on_drop=self.on_drop,
        )
        self.checkpoint = Checkpoint(
            args.checkpoint or args.file.with_name(args.file.name + ".checkpoint"),
            args.file,
            restart=args.restart,
        )
        try:
            self.dead = _DeadLetter(
                args.dead_letter or args.file.with_name(args.file.name + ".dead-letter.jsonl"),
                args.file,
                fresh=self.checkpoint.fresh,
            )
        except BaseException:
            self.checkpoint.close()
            raise
        self.id_prefix = f"import-{self.checkpoint.fingerprint[:16]}-"
        self.pending: dict[str, Call] = {}
        self.counters = Counters(total=self.total)
        self.earlier_dead = len(self.checkpoint.dead)
        self.interrupted = False
        self.stopped: str | None = None  # why the import stopped early
        self.stop = anyio.Event()
        self.progress = None if args.quiet else Progress(self.counters)

    # Hooks: called by the client's worker as each event ends.
    def on_delivered(self, event: Event) -> None:
        call = self.pending.pop(event.message_id, None)
        if call is not None:
            self.checkpoint.mark(call.line)
            self.counters.delivered += 1

    def on_error(self, error: DeliveryError) -> None:
        call = self.pending.pop(error.message_id, None)
        if call is None:
            return
        reason = cannot_go_on(error)
        if reason is None:  # the line's own fault
            self.dead_letter(call.line, one_line(str(error)), call.record)
        else:
            self._stop_early(reason)

    def on_drop(self, event: Event, reason: DropReason) -> None:
        # An interrupted or stopped shutdown drops here: the line stays undone and is resent
        # (with the same message id) by the next run.
        self.pending.pop(event.message_id, None)

    def _stop_early(self, reason: str) -> None:
        if self.stopped is None:
            self.stopped = reason
        self.stop.set()

    def dead_letter(
        self, line: int, error: str, record: dict[str, Any] | None, **detail: Any
    ) -> None:
        self.dead.write(line, error, record, **detail)
        self.checkpoint.mark(line, dead=True)
        self.counters.dead_lettered += 1

    def bad_line(self, bad: BadLine) -> None:
        print(
            f"{path_text(self.source_path)}:{bad.line}: dead-lettered: {one_line(bad.error)}",
            file=sys.stderr,
        )
        record = bad.detail.get("record")
        detail = {k: v for k, v in bad.detail.items() if k != "record"}
        self.dead_letter(bad.line, bad.error, record, **detail)

    def show(self, client: AsyncEncharge, *, force: bool = False) -> None:
        self.counters.retried = client.stats.retried
        if self.progress is not None:
            self.progress.update(force=force)

    async def run(self) -> int:
        client = self.client
        self.counters.started = time.monotonic()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_signals, tg.cancel_scope)
                try:
                    await client.__aenter__()
                    await self._feed(client)
                    while self.pending and not self.stop.is_set():
                        await client.flush(timeout=0.2)
                        self.show(client)
                finally:
                    # Stopped early: what is still queued would fail the same way; drop it
                    # (unmarked) rather than wait for it.
                    await client.aclose(timeout=0 if self.stopped else None)
                tg.cancel_scope.cancel()
        finally:
            self.checkpoint.close()
            self.dead.close()
        now = time.monotonic()
        self.counters.retried = client.stats.retried
        if self.progress is not None:
            self.progress.finish(now)
        self._summary(now)
        if self.stopped is not None:
            print(
                f"error: stopped: {self.stopped}. Nothing undelivered was marked done: "
                "run the same command again once that is fixed",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.counters.dead_lettered or self.earlier_dead else 0

    async def _feed(self, client: AsyncEncharge) -> None:
        done = self.checkpoint.done
        for item in self.source.calls():
            if self.stop.is_set():
                return
            if item.line in done:
                self.counters.skipped += 1
                continue
            if isinstance(item, BadLine):
                self.bad_line(item)
                continue
            message_id = f"{self.id_prefix}{item.line}"
            self.pending[message_id] = item
            method = getattr(client, item.method)
            while True:
                try:
                    await method(**item.kwargs, message_id=message_id, timeout=_ENQUEUE_WAIT)
                    break
                except QueueFullError:
                    # The queue is full: wait for room, but stay responsive to Ctrl-C.
                    if self.stop.is_set():
                        self.pending.pop(message_id, None)
                        return
                except (ValidationError, TypeError, ValueError, RecursionError) as exc:
                    # Anything a record can make the client refuse: that line's own fault.
                    self.pending.pop(message_id, None)
                    error = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
                    self.bad_line(BadLine(item.line, error, {"record": item.record}))
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

    def _summary(self, now: float) -> None:
        counters = self.counters
        skipped = f"  (done by an earlier run; {self.earlier_dead:,} of them dead-lettered)"
        notes = {"skipped": skipped if self.earlier_dead else "  (done by an earlier run)"}
        lines = [
            f"imported {path_text(self.source_path)} in {format_duration(counters.elapsed(now))} "
            f"({counters.rate(now):,.0f} lines/s)",
            *(f"  {name:<14}{value:>9,}{notes.get(name, '')}" for name, value in counters.fields()),
            f"  {'left':<14}{counters.left:>9,}",
        ]
        if self.dead.count:
            lines.append(
                f"dead-lettered lines were written to {path_text(self.dead.path)} "
                "(fix them and import that file)"
            )
        if counters.left:
            lines.append("not finished: run the same command again to resume from the checkpoint")
        print("\n".join(lines))


def run_import(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"error: {path_text(args.file)}: no such file", file=sys.stderr)
        return EXIT_USAGE
    job = _Import(args)
    return anyio.run(job.run)
