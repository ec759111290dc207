"""Shutdown: how long `aclose()` takes to drain a full queue, against the ideal.

`events` events are queued (none sent yet), then `aclose()` is timed while the emulator
answers each request after `latency` seconds. The ideal is events * latency / concurrency.
`shutdown_timeout` is raised so that the drain is measured, not cut (at the defaults, 16
requests in flight and 10 s, 10,000 events at 20 ms need 12.5 s: more than the bound).

Run: `python -m benchmarks.shutdown [--events N] [--latency S] [--repeats R]`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import Any

from encharge_async import AsyncEncharge

from ._common import WRITE_KEY, summarise, typical_event
from ._proc import Runner, ServerProcess, run_child

_WARMUP_TIMEOUT = 30.0


def measure_once(
    url: str, events: int, concurrency: int, shutdown_timeout: float
) -> dict[str, float]:
    """One run in this process: seconds `aclose()` took, and what it delivered and dropped."""

    async def run() -> dict[str, float]:
        client = AsyncEncharge(
            WRITE_KEY,
            endpoint=url,
            max_concurrency=concurrency,
            max_queue_size=max(events, 10_000),
            shutdown_timeout=shutdown_timeout,
        )
        await client.__aenter__()
        for i in range(concurrency):  # warm-up: imports, connections
            client.track_nowait("Registered user", **typical_event(events + i))
        await client.flush(timeout=_WARMUP_TIMEOUT)
        for i in range(events):
            client.track_nowait("Registered user", **typical_event(i))
        start = time.perf_counter()
        result = await client.aclose()
        return {
            "seconds": time.perf_counter() - start,
            "delivered": result.delivered,
            "dropped": result.dropped,
        }

    return asyncio.run(run())


def measure(
    events: int,
    latency: float,
    repeats: int,
    concurrencies: Sequence[int] = (16, 64),
    runner: Runner = run_child,
) -> dict[str, dict[str, Any]]:
    """`aclose()` drain time at each concurrency, `repeats` fresh runs each."""
    runs: dict[int, list[float]] = {c: [] for c in concurrencies}
    with ServerProcess("emulator", "--latency", str(latency)) as emulator:
        for _ in range(repeats):
            for concurrency in concurrencies:
                ideal = events * latency / concurrency
                result = runner(
                    "benchmarks.shutdown:measure_once",
                    {
                        "url": emulator.url,
                        "events": events,
                        "concurrency": concurrency,
                        "shutdown_timeout": 10 * ideal + 30,
                    },
                    timeout=10 * ideal + 120,
                )
                if result["delivered"] != events:
                    raise RuntimeError(f"aclose() delivered {result['delivered']}/{events}")
                runs[concurrency].append(result["seconds"])
    results: dict[str, dict[str, Any]] = {}
    for concurrency, seconds in runs.items():
        ideal = events * latency / concurrency
        results[f"concurrency {concurrency}"] = {
            "concurrency": concurrency,
            "events": events,
            "latency_s": latency,
            "ideal_s": ideal,
            "seconds": summarise(seconds),
            "ideal_over_actual": summarise([ideal / s for s in seconds]),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name, row in measure(args.events, args.latency, args.repeats).items():
        seconds = row["seconds"]
        print(
            f"{name}: aclose() {seconds['median']:.2f} s ({seconds['min']:.2f}-"
            f"{seconds['max']:.2f}), ideal {row['ideal_s']:.2f} s "
            f"({row['ideal_over_actual']['median']:.0%} of ideal)"
        )


if __name__ == "__main__":
    main()
