"""Profile the library's two hot paths with cProfile (stdlib: nothing to install).

`python -m benchmarks.hotspots [--calls N] [--events N] [--concurrency C] [--top K]`:

- enqueue: `track_nowait` called `calls` times on a started client, in batches during
  which the loop never yields (so only the caller's path runs). Each function's share of
  the profiled time is scaled to the unprofiled cost of a call, which cProfile's own
  overhead would otherwise inflate.
- delivery: `events` events through the default transport (or `--transport aiohttp`) at
  `concurrency` to a loopback sink; the process's CPU per delivered event, split by
  function and by package. cProfile counts each resumption of a coroutine as a call.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections import defaultdict
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport

from encharge_async import AsyncEncharge

from ._common import WRITE_KEY, loopback_only, typical_event
from ._proc import ServerProcess

Row = dict[str, Any]


def _rows(profile: cProfile.Profile) -> list[Row]:
    stats = pstats.Stats(profile)
    rows = []
    for (filename, line, function), entry in stats.stats.items():  # type: ignore[attr-defined]
        primitive_calls, calls, tottime, cumtime = entry[0], entry[1], entry[2], entry[3]
        rows.append(
            {
                "function": f"{_where(filename)}:{line}({function})",
                "package": _package(filename, function),
                "calls": calls,
                "primitive_calls": primitive_calls,
                "tottime": tottime,
                "cumtime": cumtime,
            }
        )
    return rows


def _where(filename: str) -> str:
    for marker in ("site-packages/", "/encharge_async/", "/lib/python3"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return ("encharge_async/" + tail) if marker == "/encharge_async/" else tail
    return filename


def _package(filename: str, function: str) -> str:
    if filename == "~":
        return "builtins (C)"
    if "/encharge_async/" in filename:
        return "encharge_async"
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/asyncio/" in filename:
        return "asyncio"
    return "stdlib (other)"


def profile_enqueue(calls: int, batch: int = 1000) -> dict[str, Any]:
    """Per-call cost of `track_nowait`, unprofiled, and the profile of the same calls.

    Calls come in batches of `batch` with the loop never yielding inside one (so only the
    caller's path runs); between batches, unmeasured, the queue is delivered (to an
    in-process mock transport), as a live app's loop would keep it short.
    """
    arguments = [typical_event(i) for i in range(calls)]

    async def run(profile: cProfile.Profile | None) -> float:
        client = AsyncEncharge(
            WRITE_KEY,
            endpoint="http://127.0.0.1:9/v1/",
            transport=httpx.MockTransport(lambda request: httpx.Response(200)),
            max_queue_size=batch + 1,
        )
        elapsed = 0.0
        async with client:
            client.track_nowait("warm-up", user_id=0)
            track = client.track_nowait
            for first in range(0, calls, batch):
                start = time.perf_counter()
                if profile is not None:
                    profile.enable()
                for kwargs in arguments[first : first + batch]:
                    track("Registered user", **kwargs)
                if profile is not None:
                    profile.disable()
                elapsed += time.perf_counter() - start
                await client.flush(timeout=60)
        return elapsed

    plain = min(asyncio.run(run(None)) for _ in range(3)) / calls * 1e6
    profile = cProfile.Profile()
    profiled = asyncio.run(run(profile)) / calls * 1e6
    rows = _rows(profile)
    total = sum(row["tottime"] for row in rows) or 1.0
    for row in rows:
        share = row["tottime"] / total
        row["share"] = share
        row["us_per_track_call"] = share * plain
        row["calls_per_track_call"] = row["calls"] / calls
    rows.sort(key=lambda row: row["tottime"], reverse=True)
    return {"us_per_call": plain, "us_per_call_profiled": profiled, "functions": rows}


def profile_delivery(
    url: str, events: int, concurrency: int, transport: str = "default"
) -> dict[str, Any]:
    """CPU per delivered event, split by function and package.

    `transport`: "default" (the client's own) or "aiohttp" (httpx-aiohttp's).
    """

    async def run(profile: cProfile.Profile | None) -> tuple[float, int]:
        client = AsyncEncharge(
            WRITE_KEY,
            endpoint=url,
            max_concurrency=concurrency,
            max_queue_size=events + 1,
            max_queue_bytes=1 << 30,
            transport=AiohttpTransport() if transport == "aiohttp" else None,
        )
        async with client:
            for i in range(4 * concurrency):  # warm-up: connections opened
                client.track_nowait("Registered user", **typical_event(events + i))
            await client.flush(timeout=60)
            warm = client.stats.delivered
            for i in range(events):
                client.track_nowait("Registered user", **typical_event(i))
            cpu = time.process_time()
            if profile is not None:
                profile.enable()
            await client.flush(timeout=600)
            if profile is not None:
                profile.disable()
            cpu = time.process_time() - cpu
            return cpu, client.stats.delivered - warm

    cpu, delivered = asyncio.run(run(None))
    plain = cpu / delivered * 1e6
    profile = cProfile.Profile()
    cpu, delivered = asyncio.run(run(profile))
    rows = _rows(profile)
    total = sum(row["tottime"] for row in rows) or 1.0
    packages: dict[str, float] = defaultdict(float)
    for row in rows:
        row["share"] = row["tottime"] / total
        row["us_per_event"] = row["share"] * plain
        row["calls_per_event"] = row["calls"] / delivered
        packages[row["package"]] += row["us_per_event"]
    rows.sort(key=lambda row: row["tottime"], reverse=True)
    return {
        "cpu_us_per_event": plain,
        "cpu_us_per_event_profiled": cpu / delivered * 1e6,
        "by_package": dict(sorted(packages.items(), key=lambda item: -item[1])),
        "functions": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--transport", choices=["default", "aiohttp"], default="default")
    args = parser.parse_args()
    loopback_only()

    enqueue = profile_enqueue(args.calls)
    print(
        f"## enqueue: track_nowait, {enqueue['us_per_call']:.2f} us per call "
        f"({enqueue['us_per_call_profiled']:.2f} us profiled)\n"
    )
    print(f"{'us/call':>8} {'share':>6} {'calls/call':>10}  function")
    for row in enqueue["functions"][: args.top]:
        print(
            f"{row['us_per_track_call']:8.3f} {row['share']:6.1%} "
            f"{row['calls_per_track_call']:10.2f}  {row['function']}"
        )

    with ServerProcess("sink") as sink:
        delivery = profile_delivery(sink.url, args.events, args.concurrency, args.transport)
    print(
        f"\n## delivery: {args.transport} transport, concurrency {args.concurrency}, "
        f"{delivery['cpu_us_per_event']:.0f} us CPU per event "
        f"({delivery['cpu_us_per_event_profiled']:.0f} us profiled)\n"
    )
    for package, us in delivery["by_package"].items():
        print(f"{us:8.1f} us/event  {package}")
    print(f"\n{'us/event':>8} {'share':>6} {'calls/event':>11}  function")
    for row in delivery["functions"][: args.top]:
        print(
            f"{row['us_per_event']:8.1f} {row['share']:6.1%} "
            f"{row['calls_per_event']:11.2f}  {row['function']}"
        )


if __name__ == "__main__":
    main()
