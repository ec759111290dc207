"""The counters of a run, and their display: a bar on a terminal, periodic lines elsewhere.

The progress display and the closing summary read the same `Counters` (same names, same
rate, same clock), so they cannot disagree. The display is hand-written: see "Why not
rich" in docs/cli.md for the figures behind that choice.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

__all__ = ["Counters", "Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


@dataclass
class Counters:
    """What a run has done; `skipped` is what an earlier run did (a resumed import)."""

    total: int
    delivered: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    retried: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.skipped + self.delivered + self.dead_lettered

    @property
    def left(self) -> int:
        return max(self.total - self.done, 0)

    def elapsed(self, now: float) -> float:
        return max(now - self.started, 1e-9)

    def rate(self, now: float) -> float:
        """Records finished per second by this run (an earlier run's are not counted)."""
        return (self.delivered + self.dead_lettered) / self.elapsed(now)

    def eta(self, now: float) -> str:
        rate = self.rate(now)
        if not self.left:
            return format_duration(0)
        return format_duration(self.left / rate) if rate > 0 else "--:--"

    def fields(self) -> list[tuple[str, int]]:
        """The named counts, in the order both the display and the summary show them."""
        return [
            ("delivered", self.delivered),
            ("dead-lettered", self.dead_lettered),
            ("skipped", self.skipped),
            ("retried", self.retried),
        ]


class Progress:
    """Draws `counters` at most every `interval` seconds (and always when forced)."""

    def __init__(
        self, counters: Counters, *, stream: TextIO | None = None, interval: float | None = None
    ) -> None:
        self.counters = counters
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.1 if self.tty else 2.0)
        # Off a terminal the first line waits for the interval too (no "0%" line at start).
        self._last_draw = 0.0 if self.tty else time.monotonic()

    def update(self, *, force: bool = False, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not force and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        counters = self.counters
        total, done = counters.total, counters.done
        # Rounded down: "100%" only when everything is done.
        fraction = min(done * 100 // total, 100) / 100 if total else 1.0
        counts = "  ".join(f"{name} {value:,}" for name, value in counters.fields() if value)
        text = (
            f"{fraction:4.0%} {done:,}/{total:,}  {counters.rate(now):,.0f}/s  "
            f"ETA {counters.eta(now)}  {counts}"
        ).rstrip()
        if self.tty:
            width = 24
            filled = int(width * fraction)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] {text}\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self, now: float | None = None) -> None:
        """Draw the final state (so the last line agrees with the summary) and end the line."""
        self.update(force=True, now=now)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
