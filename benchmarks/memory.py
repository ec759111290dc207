"""Memory: bytes per queued event while the endpoint is down, and RSS at the queue's bounds.

The endpoint is a loopback port nobody listens on: every attempt is refused and parked
for a retry, so events pile up as they would during an outage. Each run is a fresh
interpreter.

- `per_event`: the growth of traced memory (tracemalloc) or of RSS over `events` queued
  events, divided by `events`; with distinct people (one ordering lane pair each) or a
  few hundred people sharing lanes.
- `at_bounds`: RSS as more and more events are offered to a client with the default
  bounds (10,000 events / 32 MiB): it must stop growing once the bound is reached.

Run: `python -m benchmarks.memory [--events N] [--repeats R]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import socket
import tracemalloc
from collections.abc import Sequence
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from encharge_async import AsyncEncharge

from ._common import LOOPBACK, WRITE_KEY, summarise, typical_event
from ._proc import Runner, run_child

_MIB = 1024 * 1024
_YIELD_EVERY = 1000
_LARGE_NOTE = "x" * 8000


def down_endpoint() -> str:
    """A loopback URL nobody listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    return f"http://{LOOPBACK}:{port}/v1/"


def _event(i: int, people: int, large: bool) -> dict[str, Any]:
    kwargs = typical_event(i % people if people else i)
    if large:
        kwargs["properties"] = dict(kwargs["properties"], notes=_LARGE_NOTE)
    return kwargs


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def per_event(events: int, method: str, people: int = 0, settle: float = 0.2) -> dict[str, float]:
    """Bytes per queued event (`method`: "tracemalloc" or "rss"), in this process.

    `people`: 0 for a new person per event, else the number of people cycled through.
    `settle`: seconds given to the workers before and after (attempts refused and parked).
    """

    async def run() -> dict[str, float]:
        client = AsyncEncharge(
            WRITE_KEY,
            endpoint=down_endpoint(),
            max_queue_size=events + 1,
            max_queue_bytes=1 << 31,
            shutdown_timeout=0,
        )
        async with client:
            client.track_nowait("Registered user", **typical_event(events))
            await asyncio.sleep(settle)  # workers started, the first attempt refused
            gc.collect()
            before = tracemalloc.get_traced_memory()[0] if method == "tracemalloc" else _rss()
            for i in range(events):
                if i % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                client.track_nowait("Registered user", **_event(i, people, False))
            await asyncio.sleep(settle)  # in-flight attempts refused and parked
            gc.collect()
            after = tracemalloc.get_traced_memory()[0] if method == "tracemalloc" else _rss()
            stats = client.stats
            if stats.queued + stats.in_flight != events + 1:
                raise RuntimeError(f"{stats} pending, expected {events + 1}")
            body_bytes = stats.queued_bytes / stats.queued
        return {"bytes_per_event": (after - before) / events, "body_bytes": body_bytes}

    if method == "tracemalloc":
        tracemalloc.start()
    try:
        return asyncio.run(run())
    finally:
        tracemalloc.stop()


def at_bounds(steps: Sequence[int], large: bool, settle: float = 0.2) -> dict[str, Any]:
    """RSS (MiB) after each total of events offered to a client with the default bounds."""

    async def run() -> dict[str, Any]:
        client = AsyncEncharge(WRITE_KEY, endpoint=down_endpoint(), shutdown_timeout=0)
        offered, points = 0, []
        async with client:
            client.track_nowait("Registered user", **typical_event(-1))
            await asyncio.sleep(settle)
            for target in (0, *steps):  # 0: the baseline, before any event is queued
                while offered < target:
                    if offered % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                    client.track_nowait("Registered user", **_event(offered, 0, large))
                    offered += 1
                await asyncio.sleep(0)
                gc.collect()
                stats = client.stats
                points.append(
                    {
                        "offered": offered,
                        "queued": stats.queued,
                        "queued_mib": stats.queued_bytes / _MIB,
                        "dropped": stats.dropped,
                        "rss_mib": _rss() / _MIB,
                    }
                )
        # ru_maxrss is in KiB on Linux.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"points": points, "peak_rss_mib": peak}

    return asyncio.run(run())


def measure(
    events: int,
    repeats: int,
    steps: Sequence[int],
    runner: Runner = run_child,
    settle: float = 0.2,
) -> dict[str, Any]:
    """Bytes per queued event (several ways, `repeats` runs each) and RSS at the bounds."""
    variants = {
        "tracemalloc, a new person per event": ("tracemalloc", 0),
        "tracemalloc, 500 people": ("tracemalloc", 500),
        "RSS, a new person per event": ("rss", 0),
    }
    runs: dict[str, list[float]] = {name: [] for name in variants}
    body: list[float] = []
    for _ in range(repeats):
        for name, (method, people) in variants.items():
            result = runner(
                "benchmarks.memory:per_event",
                {"events": events, "method": method, "people": people, "settle": settle},
                timeout=300,
            )
            runs[name].append(result["bytes_per_event"])
            body.append(result["body_bytes"])
    bounds = {
        kind: runner(
            "benchmarks.memory:at_bounds",
            {"steps": list(steps), "large": large, "settle": settle},
            timeout=300,
        )
        for kind, large in (("typical events", False), ("8 KiB events", True))
    }
    for kind, series in bounds.items():
        points = series["points"]
        at_bound = next((p for p in points if p["dropped"]), points[-1])
        series["rss_growth_after_bound_mib"] = points[-1]["rss_mib"] - at_bound["rss_mib"]
        series["kind"] = kind
    return {
        "events": events,
        "body_bytes": summarise(body)["median"],
        "bytes_per_event": {name: summarise(values) for name, values in runs.items()},
        "at_default_bounds": bounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    steps = list(range(2_500, 50_001, 2_500))
    results = measure(args.events, args.repeats, steps)
    print(f"typical event body: {results['body_bytes']:.0f} bytes")
    for name, summary in results["bytes_per_event"].items():
        print(
            f"{name:40s} {summary['median']:6.0f} bytes/event "
            f"({summary['min']:.0f}-{summary['max']:.0f})"
        )
    for kind, series in results["at_default_bounds"].items():
        last = series["points"][-1]
        print(
            f"{kind}: {last['offered']} offered, {last['queued']} queued, RSS "
            f"{last['rss_mib']:.1f} MiB, +{series['rss_growth_after_bound_mib']:.1f} MiB after "
            f"the bound, peak {series['peak_rss_mib']:.1f} MiB"
        )


if __name__ == "__main__":
    main()
