"""Impact on a real app: a FastAPI app under uvicorn, loaded over loopback.

The app (`benchmarks.app`) runs in a fresh uvicorn process per run and tracks one event
per request to a loopback sink (another process); the load generator (aiohttp,
`connections` concurrent keep-alive connections, closed loop) runs here. Measured over
`duration` seconds after `warmup`: requests/s, latency percentiles, and the app
process's CPU per request (which includes the background delivery of the events).

Run: `python -m benchmarks.webapp [--duration S] [--connections N] [--repeats R]`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import aiohttp

from ._common import Summary, percentile, summarise
from ._proc import ServerProcess

_REQUEST_TIMEOUT = 30.0
_FLUSH_TIMEOUT = 150.0
_CLIENT_OF_ROUTE = {"/encharge": "encharge", "/encharge-aiohttp": "encharge_aiohttp"}

#: Rows of the benchmark: label -> (route, sink latency in seconds).
SCENARIOS: dict[str, tuple[str, float]] = {
    "tracking off": ("/off", 0.0),
    "encharge_async (default transport)": ("/encharge", 0.0),
    "encharge_async (httpx-aiohttp transport)": ("/encharge-aiohttp", 0.0),
    "naive: await httpx post in the handler": ("/naive", 0.0),
}


async def load(
    url: str,
    connections: int,
    duration: float,
    warmup: float,
    server: ServerProcess | None = None,
) -> dict[str, float]:
    """Drive `url` from `connections` closed-loop clients; measure after `warmup`.

    Returns requests/s, p50/p99 latency (ms), errors and, given the server process, its
    CPU (us) per request over the measured window. For the tracking routes, also the
    events still waiting in the app's client when the load stopped (`backlog`), the share
    of the events tracked during the run that were delivered by then, and how many were
    dropped; the app's queues are drained (bounded) before and after.
    """
    base = url.rsplit("/", 1)[0]
    client_name = _CLIENT_OF_ROUTE.get("/" + url.rsplit("/", 1)[1])
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_FLUSH_TIMEOUT)) as admin:
        async with admin.get(base + "/_flush") as response:
            before = await response.json()
        result = await _drive(url, connections, duration, warmup, server)
        async with admin.get(base + "/_stats") as response:
            after = await response.json()
        async with admin.get(base + "/_flush") as response:
            await response.read()
    if client_name is not None:
        end, start = after[client_name], before[client_name]
        result["backlog"] = float(end["queued"] + end["in_flight"])
        result["dropped"] = float(end["dropped"] - start["dropped"])
        tracked = end["enqueued"] - start["enqueued"]
        result["delivered_share"] = (end["delivered"] - start["delivered"]) / max(tracked, 1)
    return result


async def _drive(
    url: str,
    connections: int,
    duration: float,
    warmup: float,
    server: ServerProcess | None,
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, measure_to = start + warmup, start + warmup + duration
    latencies: list[float] = []
    errors = 0
    cpu: list[float] = []

    def sample_cpu() -> None:
        if server is not None:
            cpu.append(server.cpu_seconds())

    loop.call_at(measure_from, sample_cpu)
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(number: int) -> None:
            nonlocal errors
            i = number * 10_000_000
            while True:
                sent = loop.time()
                if sent >= measure_to:
                    return
                i += 1
                try:
                    async with session.get(url, params={"i": i}) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                done = loop.time()
                if sent >= measure_from and done <= measure_to:
                    if ok:
                        latencies.append(done - sent)
                    else:
                        errors += 1

        await asyncio.gather(*(client(n) for n in range(connections)))
    sample_cpu()
    latencies.sort()
    requests = len(latencies)
    result = {
        "requests_per_s": requests / duration,
        "p50_ms": percentile(latencies, 0.5) * 1000 if latencies else 0.0,
        "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else 0.0,
        "errors": float(errors),
    }
    if len(cpu) == 2 and requests:
        result["app_cpu_us_per_request"] = (cpu[1] - cpu[0]) / requests * 1e6
    return result


def measure(
    duration: float,
    warmup: float,
    connections: int,
    repeats: int,
    scenarios: Sequence[str] = tuple(SCENARIOS),
    fresh_app: bool = True,
) -> dict[str, dict[str, Any]]:
    """Every scenario `repeats` times (interleaved).

    Each run gets a fresh app process, or, with `fresh_app=False` (quicker), the
    scenarios of one repeat share one app process (one per sink latency).
    """
    runs: dict[str, dict[str, list[float]]] = {name: {} for name in scenarios}
    latencies = sorted({SCENARIOS[name][1] for name in scenarios})
    with ExitStack() as stack:
        sinks = {
            latency: stack.enter_context(ServerProcess("sink", "--latency", str(latency)))
            for latency in latencies
        }
        for _ in range(repeats):
            with ExitStack() as apps:
                shared: dict[float, ServerProcess] = {}
                for name in scenarios:
                    route, latency = SCENARIOS[name]
                    if fresh_app:
                        app = apps.enter_context(ServerProcess("app", "--sink", sinks[latency].url))
                    elif latency not in shared:
                        app = shared[latency] = apps.enter_context(
                            ServerProcess("app", "--sink", sinks[latency].url)
                        )
                    else:
                        app = shared[latency]
                    result = asyncio.run(
                        load(app.url + route, connections, duration, warmup, server=app)
                    )
                    if fresh_app:
                        app.stop()
                    for key, value in result.items():
                        runs[name].setdefault(key, []).append(value)
    results: dict[str, dict[str, Any]] = {}
    for name in scenarios:
        route, latency = SCENARIOS[name]
        row: dict[str, Any] = {"route": route, "sink_latency_s": latency}
        row.update({key: summarise(values) for key, values in runs[name].items()})
        results[name] = row
    return results


def median(row: dict[str, Any], key: str) -> float:
    """The median of one figure of a result row."""
    summary: Summary = row[key]
    return summary["median"]


def main() -> None:
    from ._common import loopback_only

    loopback_only()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = measure(args.duration, args.warmup, args.connections, args.repeats)
    for name, row in results.items():
        cpu = row.get("app_cpu_us_per_request")
        print(
            f"{name:42s} {median(row, 'requests_per_s'):6.0f} req/s  "
            f"p50 {median(row, 'p50_ms'):5.1f} ms  p99 {median(row, 'p99_ms'):5.1f} ms  "
            f"app CPU {cpu['median'] if cpu else float('nan'):5.0f} us/request  "
            f"errors {median(row, 'errors'):.0f}"
            + (
                f"  backlog {median(row, 'backlog'):.0f} dropped {median(row, 'dropped'):.0f}"
                if "backlog" in row
                else ""
            )
        )


if __name__ == "__main__":
    main()
