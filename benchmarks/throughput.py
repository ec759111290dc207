"""Throughput under latency: events/s against the emulator answering after a fixed delay.

With `concurrency` requests in flight and `latency` seconds each, Little's law caps the
rate at concurrency / latency. The emulator runs in its own process (its CPU is not the
client's); each run is a fresh interpreter: warm-up (connections opened), then
`rounds * concurrency` events queued at once and timed until delivered.

Run: `python -m benchmarks.throughput [--latency S] [--rounds N] [--repeats R]`.
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


def measure_once(url: str, events: int, concurrency: int, timeout: float) -> dict[str, float]:
    """One run in this process: wall seconds to deliver `events` events, and how many were."""

    async def run() -> dict[str, float]:
        client = AsyncEncharge(
            WRITE_KEY,
            endpoint=url,
            max_concurrency=concurrency,
            max_queue_size=events + concurrency + 1,
            max_queue_bytes=1 << 30,
            shutdown_timeout=0,
        )
        async with client:
            for i in range(concurrency):
                client.track_nowait("Registered user", **typical_event(events + i))
            await client.flush(timeout=_WARMUP_TIMEOUT)
            warm = client.stats.delivered
            for i in range(events):
                client.track_nowait("Registered user", **typical_event(i))
            wall, cpu = time.perf_counter(), time.process_time()
            await client.flush(timeout=timeout)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            delivered = client.stats.delivered - warm
        return {"wall_s": wall, "cpu_s": cpu, "delivered": delivered}

    return asyncio.run(run())


def measure(
    latency: float,
    rounds: int,
    repeats: int,
    concurrencies: Sequence[int] = (16, 64),
    runner: Runner = run_child,
) -> dict[str, dict[str, Any]]:
    """Events/s at each concurrency, `repeats` fresh runs each, against Little's law."""
    runs: dict[int, dict[str, list[float]]] = {c: {"rate": [], "cpu": []} for c in concurrencies}
    with ServerProcess("emulator", "--latency", str(latency)) as emulator:
        for _ in range(repeats):
            for concurrency in concurrencies:
                events = rounds * concurrency
                ideal_s = rounds * latency
                result = runner(
                    "benchmarks.throughput:measure_once",
                    {
                        "url": emulator.url,
                        "events": events,
                        "concurrency": concurrency,
                        "timeout": 10 * ideal_s + 30,
                    },
                    timeout=10 * ideal_s + 120,
                )
                if result["delivered"] != events:
                    raise RuntimeError(f"only {result['delivered']}/{events} delivered")
                runs[concurrency]["rate"].append(events / result["wall_s"])
                runs[concurrency]["cpu"].append(result["cpu_s"] / events * 1e6)
    results: dict[str, dict[str, Any]] = {}
    for concurrency, row in runs.items():
        little = concurrency / latency
        rate = summarise(row["rate"])
        results[f"concurrency {concurrency}"] = {
            "concurrency": concurrency,
            "latency_s": latency,
            "events": rounds * concurrency,
            "littles_law_events_per_s": little,
            "events_per_s": rate,
            "fraction_of_littles_law": summarise([r / little for r in row["rate"]]),
            "cpu_us_per_event": summarise(row["cpu"]),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name, row in measure(args.latency, args.rounds, args.repeats).items():
        rate, share = row["events_per_s"], row["fraction_of_littles_law"]
        print(
            f"{name}: {rate['median']:.0f} events/s ({rate['min']:.0f}-{rate['max']:.0f}), "
            f"{share['median']:.1%} of Little's law ({row['littles_law_events_per_s']:.0f}/s)"
        )


if __name__ == "__main__":
    main()
