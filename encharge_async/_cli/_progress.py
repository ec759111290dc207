"""A one-line progress display on stderr: a bar on a terminal, periodic lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Shows done/total with rate, ETA and counters; `interval` limits how often it draws."""

    def __init__(
        self, total: int, *, stream: TextIO | None = None, interval: float | None = None
    ) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.1 if self.tty else 2.0)
        self.started = time.monotonic()
        self._last_draw = 0.0

    def update(self, done: int, *, force: bool = False, **counters: int) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 and self.total > done else 0.0
        counts = " ".join(f"{name} {value:,}" for name, value in counters.items())
        fraction = min(done / self.total, 1.0) if self.total else 1.0
        text = (
            f"{fraction:4.0%} {done:,}/{self.total:,}  {rate:,.0f}/s  "
            f"ETA {format_duration(eta)}  {counts}"
        )
        if self.tty:
            width = 24
            filled = int(width * fraction)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] {text}\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
