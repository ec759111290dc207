"""Caller cost: the time one `await encharge.track(...)` takes on the request's path.

Run: `python -m benchmarks.enqueue [--events N] [--repeats R]`. Prints the median and p99
per call of each candidate, for `repeats` runs, and the median of the run medians.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

from encharge_async import AsyncEncharge

Candidate = Callable[[int], Coroutine[Any, Any, list[int]]]


async def floor_asyncio_queue(events: int) -> list[int]:
    """The floor: a dict put into an asyncio.Queue."""
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    timings = []
    clock = time.perf_counter_ns
    for i in range(events):
        start = clock()
        queue.put_nowait(
            {
                "name": "Registered user",
                "user": {"userId": str(i)},
                "properties": {"plan": "Premium"},
            }
        )
        timings.append(clock() - start)
    return timings


async def _client_timings(events: int, nowait: bool) -> list[int]:
    sink = httpx.MockTransport(lambda request: httpx.Response(200))
    timings = []
    clock = time.perf_counter_ns
    async with AsyncEncharge(
        "bench-key", transport=sink, max_queue_size=events + 1, max_queue_bytes=1 << 30
    ) as client:
        client.track_nowait("warm-up", user_id=0)
        for i in range(events):
            if i % 1000 == 0:
                await asyncio.sleep(0)  # let the worker drain, as a live app's loop would
            start = clock()
            if nowait:
                client.track_nowait(
                    "Registered user", user_id=str(i), properties={"plan": "Premium"}
                )
            else:
                await client.track(
                    "Registered user", user_id=str(i), properties={"plan": "Premium"}
                )
            timings.append(clock() - start)
        await client.flush(timeout=60)
    return timings


async def encharge_track(events: int) -> list[int]:
    return await _client_timings(events, nowait=False)


async def encharge_track_nowait(events: int) -> list[int]:
    return await _client_timings(events, nowait=True)


CANDIDATES: dict[str, Candidate] = {
    "floor: asyncio.Queue.put_nowait": floor_asyncio_queue,
    "encharge_async: await track()": encharge_track,
    "encharge_async: track_nowait()": encharge_track_nowait,
}


def measure(events: int, repeats: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name, candidate in CANDIDATES.items():
        medians, p99s = [], []
        for _ in range(repeats):
            gc.collect()
            timings: list[int] = sorted(asyncio.run(candidate(events)))
            medians.append(timings[len(timings) // 2] / 1000)
            p99s.append(timings[int(len(timings) * 0.99)] / 1000)
        results[name] = {
            "median_us": statistics.median(medians),
            "median_min_us": min(medians),
            "median_max_us": max(medians),
            "p99_us": statistics.median(p99s),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for name, row in measure(args.events, args.repeats).items():
        print(
            f"{name:36s} median {row['median_us']:6.2f} us "
            f"({row['median_min_us']:.2f}-{row['median_max_us']:.2f})  p99 {row['p99_us']:6.2f} us"
        )


if __name__ == "__main__":
    main()
