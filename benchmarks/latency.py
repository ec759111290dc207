"""The client on its defaults against slow, refusing and quiet endpoints.

- Latency sweep: an app produces `rate` events/s for `seconds` against a sink answering
  after 20, 100 or 300 ms; delivered events/s, how long the backlog takes to drain after
  the last call, drops, and the concurrency limit the client reached.
- Refusals: an emulator that answers 429 beyond `cap` requests in hand (and after
  `latency`); the share of requests refused, and what was lost (nothing, on target).
- Connections: events at 1, 10 and 50 events/s for `seconds` against a sink that counts
  the connections it accepts (the workers reuse their warm connections).

Each measurement runs in a fresh interpreter; servers run in processes of their own,
except the connection counter, which must count in the measured process.

Run: `python -m benchmarks.latency [--rate N] [--seconds S] [--repeats R]`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import Any

from encharge_async import AsyncEncharge

from ._common import LOOPBACK, WRITE_KEY, summarise, typical_event
from ._proc import Runner, ServerProcess, run_child
from .servers import SinkProtocol

_TICK = 0.005  # the app's pacing step
_DRAIN_TIMEOUT = 120.0


async def _produce(client: AsyncEncharge, rate: float, seconds: float) -> tuple[int, int]:
    """Call track_nowait `rate` times a second for `seconds`; the calls made and the highest
    concurrency limit seen meanwhile."""
    start = time.perf_counter()
    total = round(rate * seconds)
    sent = peak = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while sent < due:
            client.track_nowait("Registered user", **typical_event(sent))
            sent += 1
        peak = max(peak, client.stats.concurrency_limit)
        await asyncio.sleep(_TICK)
    return sent, peak


def sweep_once(url: str, rate: float, seconds: float) -> dict[str, float]:
    """One run in this process: a default client, `rate` events/s for `seconds`."""

    async def run() -> dict[str, float]:
        async with AsyncEncharge(WRITE_KEY, endpoint=url, shutdown_timeout=0) as client:
            start = time.perf_counter()
            sent, peak = await _produce(client, rate, seconds)
            last_call = time.perf_counter()
            await client.flush(timeout=_DRAIN_TIMEOUT)
            end = time.perf_counter()
            stats = client.stats
        return {
            "sent": sent,
            "delivered": stats.delivered,
            "dropped": stats.dropped,
            "drain_s": end - last_call,
            "events_per_s": stats.delivered / (end - start),
            "peak_limit": max(peak, stats.concurrency_limit),
        }

    return asyncio.run(run())


def refusals_once(url: str, events: int) -> dict[str, float]:
    """One run: `events` queued at once on a default client; requests refused and lost."""

    async def run() -> dict[str, float]:
        async with AsyncEncharge(
            WRITE_KEY, endpoint=url, shutdown_timeout=0, max_queue_size=events + 1
        ) as client:
            start = time.perf_counter()
            for i in range(events):
                client.track_nowait("Registered user", **typical_event(i))
            await client.flush(timeout=_DRAIN_TIMEOUT)
            seconds = time.perf_counter() - start
            stats = client.stats
        # Every failed attempt here is a 429, retried: retries count the refusals.
        requests = stats.delivered + stats.retried
        return {
            "delivered": stats.delivered,
            "lost": events - stats.delivered,
            "refused_share": stats.retried / requests,
            "events_per_s": stats.delivered / seconds,
            "final_limit": stats.concurrency_limit,
        }

    return asyncio.run(run())


def connections_once(rate: float, seconds: float, latency: float) -> dict[str, float]:
    """One run: a default client at `rate` events/s; connections a local sink accepted."""

    async def run() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        opened = 0
        live: set[SinkProtocol] = set()

        def accept() -> SinkProtocol:
            nonlocal opened
            opened += 1
            return SinkProtocol(latency, live)

        server = await loop.create_server(accept, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            url = f"http://{LOOPBACK}:{port}/v1/"
            async with AsyncEncharge(WRITE_KEY, endpoint=url, shutdown_timeout=0) as client:
                sent, _ = await _produce(client, rate, seconds)
                await client.flush(timeout=_DRAIN_TIMEOUT)
                delivered = client.stats.delivered
        finally:
            server.close()
            for connection in list(live):
                connection.abort()
        return {"sent": sent, "delivered": delivered, "connections": opened}

    return asyncio.run(run())


def measure(
    latencies: Sequence[float],
    rate: float,
    seconds: float,
    repeats: int,
    *,
    cap: int,
    cap_latency: float,
    cap_events: int,
    low_rates: Sequence[float],
    low_seconds: float,
    runner: Runner = run_child,
) -> dict[str, Any]:
    """The sweep, the refusals and the connections, `repeats` fresh runs each."""
    timeout = seconds + _DRAIN_TIMEOUT + 60
    sweep: dict[str, Any] = {}
    for latency in latencies:
        runs = []
        with ServerProcess("sink", "--latency", str(latency)) as sink:
            for _ in range(repeats):
                runs.append(
                    runner(
                        "benchmarks.latency:sweep_once",
                        {"url": sink.url, "rate": rate, "seconds": seconds},
                        timeout=timeout,
                    )
                )
        sweep[f"{latency * 1000:.0f} ms"] = {
            "latency_s": latency,
            "offered_events_per_s": rate,
            "seconds": seconds,
            **{
                key: summarise([r[key] for r in runs])
                for key in ("events_per_s", "drain_s", "dropped", "peak_limit")
            },
        }
    runs = []
    with ServerProcess(
        "emulator", "--latency", str(cap_latency), "--max-in-flight", str(cap)
    ) as emulator:
        for _ in range(repeats):
            runs.append(
                runner(
                    "benchmarks.latency:refusals_once",
                    {"url": emulator.url, "events": cap_events},
                    timeout=_DRAIN_TIMEOUT + 60,
                )
            )
    refusals = {
        "cap": cap,
        "latency_s": cap_latency,
        "events": cap_events,
        **{
            key: summarise([r[key] for r in runs])
            for key in ("refused_share", "lost", "events_per_s", "final_limit")
        },
    }
    connections: dict[str, Any] = {}
    for low in low_rates:
        runs = [
            runner(
                "benchmarks.latency:connections_once",
                {"rate": low, "seconds": low_seconds, "latency": cap_latency},
                timeout=low_seconds + _DRAIN_TIMEOUT,
            )
            for _ in range(repeats)
        ]
        connections[f"{low:g} events/s"] = {
            "rate": low,
            "seconds": low_seconds,
            "events": runs[0]["sent"],
            "connections": summarise([r["connections"] for r in runs]),
        }
    return {"sweep": sweep, "refusals": refusals, "connections": connections}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, nargs="+", default=[0.02, 0.1, 0.3])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cap", type=int, default=24)
    parser.add_argument("--cap-events", type=int, default=2000)
    args = parser.parse_args()
    results = measure(
        args.latency,
        args.rate,
        args.seconds,
        args.repeats,
        cap=args.cap,
        cap_latency=0.1,
        cap_events=args.cap_events,
        low_rates=(1.0, 10.0, 50.0),
        low_seconds=2.0,
    )
    from .report import latency_tables

    print(latency_tables(results))


if __name__ == "__main__":
    main()
