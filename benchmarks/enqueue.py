"""Caller cost: the time one fire-and-forget call takes on the request's path.

Run: `python -m benchmarks.enqueue [--events N] [--repeats R]`. Prints, per candidate, the
median of the run medians (min-max of the run medians) and the median run p99. Every
candidate really delivers, to a loopback sink in another process: its background work
(a worker task on the same loop, or a thread) competes with the caller as in an app. The
loop is given a turn every 1,000 calls, as a live app's loop would.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import threading
import time
from collections.abc import Callable, Collection, Coroutine
from contextlib import nullcontext
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

from encharge_async import AsyncEncharge, Encharge, _json

from ._common import WRITE_KEY, percentile, typical_event
from ._proc import ServerProcess

Candidate = Callable[[int, str], Coroutine[Any, Any, list[int]]]

_PROPERTIES = typical_event(0)["properties"]
_DRAIN_TIMEOUT = 60.0
_YIELD_EVERY = 1000


async def floor_asyncio_queue(events: int, sink_url: str) -> list[int]:
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


def _client_options(events: int, sink_url: str) -> dict[str, Any]:
    return {
        "endpoint": sink_url,
        "max_queue_size": events + 1,
        "max_queue_bytes": 1 << 30,
        "shutdown_timeout": 0,  # only the calls are measured: what is left is dropped
    }


async def _client_timings(events: int, sink_url: str, nowait: bool) -> list[int]:
    timings = []
    clock = time.perf_counter_ns
    client = AsyncEncharge(WRITE_KEY, **_client_options(events, sink_url))
    async with client:
        client.track_nowait("warm-up", user_id=0)
        for i in range(events):
            if i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            kwargs = typical_event(i)
            start = clock()
            if nowait:
                client.track_nowait("Registered user", **kwargs)
            else:
                await client.track("Registered user", **kwargs)
            timings.append(clock() - start)
    return timings


async def encharge_track(events: int, sink_url: str) -> list[int]:
    """`await encharge.track(...)`."""
    return await _client_timings(events, sink_url, nowait=False)


async def encharge_track_nowait(events: int, sink_url: str) -> list[int]:
    """`encharge.track_nowait(...)`."""
    return await _client_timings(events, sink_url, nowait=True)


async def encharge_track_nowait_stdlib_json(events: int, sink_url: str) -> list[int]:
    """`encharge.track_nowait(...)` without orjson (the stdlib encoder)."""
    _json.use_orjson(False)
    try:
        return await _client_timings(events, sink_url, nowait=True)
    finally:
        _json.use_orjson(True)


async def encharge_sync_track(events: int, sink_url: str) -> list[int]:
    """The sync client's `Encharge.track(...)` (its loop runs in a thread of its own)."""
    timings = []
    clock = time.perf_counter_ns
    client = Encharge(WRITE_KEY, **_client_options(events, sink_url))
    try:
        client.track("warm-up", user_id=0)
        for i in range(events):
            if i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            kwargs = typical_event(i)
            start = clock()
            client.track("Registered user", **kwargs)
            timings.append(clock() - start)
    finally:
        await asyncio.to_thread(client.close, 5.0)
    return timings


def _base_url(sink_url: str) -> str:
    parts = urlsplit(sink_url)
    return f"{parts.scheme}://{parts.netloc}"


async def posthog_capture(events: int, sink_url: str) -> list[int]:
    """posthog's asyncio client: `AsyncClient.capture(...)` (its worker task posts batches)."""
    from posthog import AsyncClient

    timings = []
    clock = time.perf_counter_ns
    client = AsyncClient(
        "phc_bench", host=_base_url(sink_url), max_queue_size=events + 1, max_retries=0
    )
    async with client:
        for i in range(events):
            if i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            properties = dict(_PROPERTIES, email=f"user{i}@example.com")
            start = clock()
            client.capture("Registered user", distinct_id=str(100_000 + i), properties=properties)
            timings.append(clock() - start)
        await client.flush(timeout_seconds=_DRAIN_TIMEOUT)
    return timings


async def segment_track(events: int, sink_url: str) -> list[int]:
    """segment analytics-python: `Client.track(...)` (a consumer thread posts batches)."""
    from segment.analytics import Client  # type: ignore[import-untyped,unused-ignore]

    timings = []
    clock = time.perf_counter_ns
    client = Client(WRITE_KEY, host=_base_url(sink_url), max_queue_size=events + 1, max_retries=0)
    try:
        for i in range(events):
            if i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            properties = dict(_PROPERTIES, email=f"user{i}@example.com")
            start = clock()
            client.track(user_id=str(100_000 + i), event="Registered user", properties=properties)
            timings.append(clock() - start)
    finally:
        await _stop_segment(client)
    return timings


async def _stop_segment(client: Any) -> None:
    """segment's flush() and join() wait without a bound: wait for the queue, bounded, here."""
    deadline = time.monotonic() + _DRAIN_TIMEOUT
    while client.queue.unfinished_tasks and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    for consumer in client.consumers or ():
        consumer.pause()
    for consumer in client.consumers or ():
        if isinstance(consumer, threading.Thread):
            await asyncio.to_thread(consumer.join, 5.0)


CANDIDATES: dict[str, Candidate] = {
    "floor: asyncio.Queue.put_nowait": floor_asyncio_queue,
    "encharge_async: await track()": encharge_track,
    "encharge_async: track_nowait()": encharge_track_nowait,
    "encharge_async: track_nowait() (stdlib json)": encharge_track_nowait_stdlib_json,
    "encharge_async: Encharge.track() (sync client)": encharge_sync_track,
    "posthog: AsyncClient.capture()": posthog_capture,
    "segment: analytics-python track()": segment_track,
}


# What the per-version section measures: our own calls, on the orjson path.
VERSION_CANDIDATES = ("encharge_async: await track()", "encharge_async: track_nowait()")


def measure(
    events: int,
    repeats: int,
    sink_url: str | None = None,
    names: Collection[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Every candidate (or those in `names`) `repeats` times (interleaved); the median and
    p99 of each run.

    Returns, per candidate: `median_us` (median of the run medians), `median_min_us`,
    `median_max_us`, `p99_us` (median of the run p99s), `p99_min_us`, `p99_max_us`.
    Starts a loopback sink when `sink_url` is not given.
    """
    candidates = {
        name: candidate for name, candidate in CANDIDATES.items() if names is None or name in names
    }
    with nullcontext(sink_url) if sink_url else ServerProcess("sink") as sink:
        url = sink if isinstance(sink, str) else sink.url
        medians: dict[str, list[float]] = {name: [] for name in candidates}
        p99s: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(repeats):
            for name, candidate in candidates.items():
                gc.collect()
                timings = sorted(asyncio.run(candidate(events, url)))
                medians[name].append(percentile(timings, 0.5) / 1000)
                p99s[name].append(percentile(timings, 0.99) / 1000)
    return {
        name: {
            "median_us": statistics.median(medians[name]),
            "median_min_us": min(medians[name]),
            "median_max_us": max(medians[name]),
            "p99_us": statistics.median(p99s[name]),
            "p99_min_us": min(p99s[name]),
            "p99_max_us": max(p99s[name]),
        }
        for name in candidates
    }


def measure_child(events: int, repeats: int, sink_url: str) -> dict[str, dict[str, float]]:
    """`measure`, for `benchmarks._child` (a fresh, loopback-only process)."""
    return measure(events, repeats, sink_url)


def measure_version_child(events: int, repeats: int, sink_url: str) -> dict[str, Any]:
    """Our own calls (`VERSION_CANDIDATES`), for `benchmarks._child` run by another Python.

    Returns the interpreter's version, orjson's version (None: not installed, the stdlib
    path was measured) and the rows of `measure`.
    """
    try:
        orjson_version: str | None = metadata.version("orjson")
    except metadata.PackageNotFoundError:
        orjson_version = None
    return {
        "python": platform.python_version(),
        "orjson": orjson_version,
        "rows": measure(events, repeats, sink_url, names=VERSION_CANDIDATES),
    }


def main() -> None:
    from ._common import loopback_only

    loopback_only()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for name, row in measure(args.events, args.repeats).items():
        print(
            f"{name:46s} median {row['median_us']:6.2f} us "
            f"({row['median_min_us']:.2f}-{row['median_max_us']:.2f})  p99 {row['p99_us']:6.2f} us"
        )


if __name__ == "__main__":
    main()
