"""Event loop health: the client never holds the loop for long while a big backlog drains.

LOOP_EVENTS events are queued (CHUNK calls at a time, the loop turning between chunks, as
requests would) and drain against a slow emulator (LATENCY per request, in a child
process so that only the client runs on the measured loop), with the default concurrency,
for DRAIN_WINDOW seconds: at 16 requests of 50 ms at a time, a full drain of 50,000 events
would take minutes. Meanwhile a ticker task sleeps 5 ms in a loop and records by how much
each sleep overshot: the loop's stalls. The shutdown that follows drops the backlog left
and is measured apart (reported, not asserted: the requirement is about draining).

Cyclic garbage collection scans every object of the process, the whole test session's
included (pytest, hypothesis, FastAPI...), which no library controls: the objects that
exist before the measurement are frozen out of it (`gc.freeze()`), and generation-2
collections are timed and reported.

Asserted: the 99.9th percentile of the stalls stays under 50 ms (the issue's bound), the
stalls counted in the time the loop really held the CPU. A wall-clock overshoot also counts
the time the OS gave the CPU to other processes: on a shared 2-core machine under load
(another test suite, a build) the process waits its turn for tens of ms at a time, which no
library controls and which made the wall-clock figure fail on any Python. So each stall is
taken as the smaller of its wall-clock overshoot and the CPU time the loop's thread used
while the ticker slept: a loop held by the client for 60 ms shows 60 ms in both, a process
preempted for 60 ms shows only the CPU it got. The wall-clock figures are reported too, as
is the maximum: not asserted.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from encharge_async import AsyncEncharge

from .conftest import Stopwatch, child_emulator, summary

# The stall measurement runs in a fresh interpreter (see the last test): in the whole
# suite's process, the session's heap and any thread an earlier test left running would be
# measured too.
CHILD_ENV = "ENCHARGE_LOOP_HEALTH_CHILD"

# Soak, fault and crash tests: the full suite runs them.
pytestmark = pytest.mark.slow


KEY = "wk-loop-0123456789"
LOOP_EVENTS = 50_000
CHUNK = 500  # calls between two turns of the loop
DRAIN_WINDOW = 4.0  # seconds of drain measured
MAX_CONCURRENCY = 16  # the default
LATENCY = 0.05  # seconds the emulator takes per request
TICK = 0.005
STALL_BOUND = 0.050  # the requirement


class Ticker:
    """Sleeps TICK seconds in a loop and records each overshoot: in wall-clock time
    (`stalls`), and bounded by the CPU time the loop's thread used meanwhile (`held`)."""

    def __init__(self) -> None:
        self.stalls: list[float] = []
        self.held: list[float] = []

    async def run(self) -> None:
        while True:
            start, cpu = time.perf_counter(), time.thread_time()
            await anyio.sleep(TICK)  # the measurement itself: how late does it wake?
            late = max(0.0, time.perf_counter() - start - TICK)
            self.stalls.append(late)
            self.held.append(min(late, time.thread_time() - cpu))

    def figures(self) -> dict[str, Any]:
        ordered, held = sorted(self.stalls), sorted(self.held)
        return {
            "ticks": len(ordered),
            "p50_ms": round(statistics.median(ordered) * 1e3, 2),
            "p99_ms": round(_percentile(ordered, 0.99) * 1e3, 2),
            "p99_9_ms": round(_percentile(ordered, 0.999) * 1e3, 2),
            "max_ms": round(ordered[-1] * 1e3, 2),
            "held_p99_ms": round(_percentile(held, 0.99) * 1e3, 2),
            "held_p99_9_ms": round(_percentile(held, 0.999) * 1e3, 2),
            "held_max_ms": round(held[-1] * 1e3, 2),
        }


def _percentile(ordered: list[float], fraction: float) -> float:
    """Percentile of sorted values, interpolated between the two nearest ranks.

    With ~800 ticks, p99.9 lies between the largest and the second largest stall, near
    the latter: one stall (the OS preempting the process, say) is tolerated, two are not.
    """
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class GcWatch:
    """Times the cyclic garbage collections of generation 2."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._started)


@contextmanager
def watching_gc() -> Iterator[GcWatch]:
    """Time generation-2 collections; leave out of them what existed before (the test
    session's heap, which a collection would otherwise scan, in any test)."""
    watch = GcWatch()
    gc.collect()
    gc.freeze()
    gc.callbacks.append(watch)
    try:
        yield watch
    finally:
        gc.callbacks.remove(watch)
        gc.unfreeze()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.skipif(
    os.environ.get(CHILD_ENV) != "1", reason="measured in a fresh process by the next test"
)
async def test_the_loop_never_stalls_while_a_backlog_drains(
    tmp_path: Path, anyio_backend: str
) -> None:
    clock = Stopwatch()
    async with child_emulator(tmp_path, KEY, latency=LATENCY) as emulator:
        client = AsyncEncharge(
            KEY,
            endpoint=emulator.url,
            max_queue_size=LOOP_EVENTS,
            max_concurrency=MAX_CONCURRENCY,
            shutdown_timeout=0,
        )
        async with client:
            # Warm up: connections open, lazy imports done.
            for n in range(2 * MAX_CONCURRENCY):
                client.track_nowait("Warm-up", user_id=f"w{n}")
            assert (await client.flush(timeout=30)).complete
            ticker = Ticker()
            with watching_gc() as collections:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(ticker.run)
                    for n in range(LOOP_EVENTS):
                        await client.track(
                            "Step",
                            user_id=f"p{n % 1000}",
                            email=f"p{n % 1000}@example.com",
                            properties={"n": n, "plan": "pro"},
                        )
                        if n % CHUNK == CHUNK - 1:
                            await anyio.lowlevel.checkpoint()
                    queued_at = clock.elapsed
                    await anyio.sleep(DRAIN_WINDOW)  # a measured window, on purpose
                    tg.cancel_scope.cancel()
            drained = client.stats
            closing = Ticker()
            async with anyio.create_task_group() as tg:
                tg.start_soon(closing.run)
                await anyio.sleep(TICK)  # measured windows around the close, on purpose
                await client.aclose()  # drops the backlog left
                await anyio.sleep(2 * TICK)  # (measured, as above)
                tg.cancel_scope.cancel()

    figures = ticker.figures()
    gc_max_ms = round(max(collections.pauses, default=0.0) * 1e3, 2)
    summary(
        "event loop health",
        backend=anyio_backend,
        events_queued=LOOP_EVENTS,
        queued_in_s=queued_at,
        drain_window_s=DRAIN_WINDOW,
        delivered_in_window=drained.delivered - 2 * MAX_CONCURRENCY,
        **figures,
        gc2_collections=len(collections.pauses),
        gc2_max_ms=gc_max_ms,
        shutdown_max_stall_ms=closing.figures()["max_ms"],
        dropped_at_shutdown=client.stats.dropped,
        seconds=clock.elapsed,
    )
    assert drained.delivered > 2 * MAX_CONCURRENCY  # it was draining meanwhile
    assert figures["ticks"] > 100
    assert figures["held_p99_9_ms"] < STALL_BOUND * 1e3, figures


def test_the_loop_health_measurement_in_a_fresh_process() -> None:
    """Run the stall measurement above in an interpreter of its own, and report it."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            f"{Path(__file__).resolve()}",
            "-k",
            "the_loop_never_stalls",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
        ],
        env={**os.environ, CHILD_ENV: "1"},
        cwd=root,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout
