"""CPU per delivered event: process CPU time / events delivered to a minimal local sink.

Each run happens in a fresh interpreter (`benchmarks._child`) and measures a window on a
warmed-up client (see `Window`): all the CPU the process spends (every thread) while it
delivers `events` events, or what it can in `max_seconds`. The sink runs in another
process; its CPU is measured too, to show it is not the bottleneck.

Run: `python -m benchmarks.delivery [--events N] [--repeats R] [--concurrency 1 16 64]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from encharge_async import AsyncEncharge

from ._common import WRITE_KEY, summarise, typical_event, typical_payload
from ._proc import Runner, ServerProcess, run_child

ClientRun = Callable[["Window", str, int, int], Coroutine[Any, Any, None]]

_HEADERS = {"Content-Type": "application/json", "X-Encharge-Token": WRITE_KEY}
_WARMUP_TIMEOUT = 60.0
_TEARDOWN_TIMEOUT = 30.0


class Window:
    """The measured stretch of one run, on a warmed-up client.

    Each runner first sends `warmup` events through the same client (imports, lazy set-up,
    connections opened), then measures from the moment the events are ready to send until
    they are all delivered or `max_seconds` have passed. Creating and closing clients is
    outside the window; so is queueing for AsyncEncharge (the caller cost, measured by
    `benchmarks.enqueue`).
    """

    def __init__(self, max_seconds: float, warmup: int) -> None:
        self.max_seconds = max_seconds
        self.warmup = warmup
        self.cpu_s = self.wall_s = 0.0
        self.delivered = 0

    def start(self) -> None:
        gc.collect()
        self.cpu_s, self.wall_s = time.process_time(), time.perf_counter()

    def stop(self, delivered: int) -> None:
        self.cpu_s = time.process_time() - self.cpu_s
        self.wall_s = time.perf_counter() - self.wall_s
        self.delivered = delivered


async def encharge_default(window: Window, url: str, events: int, concurrency: int) -> None:
    """AsyncEncharge with its default transport."""
    await _encharge(window, url, events, concurrency, None)


async def encharge_aiohttp(window: Window, url: str, events: int, concurrency: int) -> None:
    """AsyncEncharge with httpx-aiohttp's transport."""
    transport = AiohttpTransport(limits=httpx.Limits(max_connections=concurrency))
    await _encharge(window, url, events, concurrency, transport)


async def _encharge(
    window: Window,
    url: str,
    events: int,
    concurrency: int,
    transport: httpx.AsyncBaseTransport | None,
) -> None:
    client = AsyncEncharge(
        WRITE_KEY,
        endpoint=url,
        max_concurrency=concurrency,
        max_queue_size=events + window.warmup + 1,
        max_queue_bytes=1 << 30,
        shutdown_timeout=0,  # what the window left undelivered is dropped, unmeasured
        transport=transport,
    )
    async with client:
        for i in range(window.warmup):
            client.track_nowait("Registered user", **typical_event(events + i))
        await client.flush(timeout=_WARMUP_TIMEOUT)
        warm = client.stats.delivered
        for i in range(events):
            client.track_nowait("Registered user", **typical_event(i))
        window.start()
        await client.flush(timeout=window.max_seconds)
        window.stop(client.stats.delivered - warm)


async def naive_httpx(window: Window, url: str, events: int, concurrency: int) -> None:
    """A task per event posting through one shared client, at most `concurrency` at once.

    The producer takes a semaphore slot before spawning each task (the usual bounded
    fire-and-forget), so the backlog never exceeds `concurrency` tasks.
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    delivered = 0
    async with httpx.AsyncClient(limits=limits) as client:

        async def send(i: int) -> None:
            nonlocal delivered
            try:
                response = await client.post(url, json=typical_payload(i), headers=_HEADERS)
                delivered += response.status_code == 200
            finally:
                semaphore.release()

        async def pump(first: int, count: int, seconds: float) -> None:
            deadline = time.perf_counter() + seconds
            for i in range(first, first + count):
                await semaphore.acquire()
                if time.perf_counter() > deadline:
                    semaphore.release()
                    break
                task = asyncio.create_task(send(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=_TEARDOWN_TIMEOUT)

        await pump(events, window.warmup, _WARMUP_TIMEOUT)
        warm = delivered
        window.start()
        await pump(0, events, window.max_seconds)
        window.stop(delivered - warm)


async def aiohttp_floor(window: Window, url: str, events: int, concurrency: int) -> None:
    """The floor: `concurrency` coroutines posting through one aiohttp session."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def sender(numbers: Iterator[int], deadline: float) -> int:
            ok = 0
            for i in numbers:
                body = orjson.dumps(typical_payload(i))
                async with session.post(url, data=body, headers=_HEADERS) as response:
                    await response.read()
                    ok += response.status == 200
                if time.perf_counter() > deadline:
                    break
            return ok

        async def pump(first: int, count: int, seconds: float) -> int:
            numbers = iter(range(first, first + count))
            deadline = time.perf_counter() + seconds
            sent = await asyncio.gather(*(sender(numbers, deadline) for _ in range(concurrency)))
            return sum(sent)

        await pump(events, window.warmup, _WARMUP_TIMEOUT)
        window.start()
        delivered = await pump(0, events, window.max_seconds)
        window.stop(delivered)


CLIENTS: dict[str, ClientRun] = {
    "encharge_async (default transport)": encharge_default,
    "encharge_async (httpx-aiohttp transport)": encharge_aiohttp,
    "naive httpx.AsyncClient.post + semaphore": naive_httpx,
    "floor: plain aiohttp client": aiohttp_floor,
}


def measure_once(
    client: str,
    url: str,
    events: int,
    concurrency: int,
    max_seconds: float = 2.0,
    warmup: int = 200,
    runs: int = 1,
) -> dict[str, list[dict[str, float]]]:
    """`runs` runs in this process: CPU and wall seconds of each window, events delivered."""
    results: list[dict[str, float]] = []
    for _ in range(runs):
        window = Window(max_seconds, max(warmup, 4 * concurrency))
        asyncio.run(CLIENTS[client](window, url, events, concurrency))
        results.append(
            {
                "cpu_s": window.cpu_s,
                "wall_s": window.wall_s,
                "delivered": window.delivered,
                "warmup": window.warmup,
            }
        )
    return {"runs": results}


def measure(
    events: int,
    repeats: int,
    concurrencies: Sequence[int] = (1, 16, 64),
    clients: Sequence[str] = tuple(CLIENTS),
    max_seconds: float = 2.0,
    fresh_process_per_run: bool = True,
    runner: Runner = run_child,
) -> dict[str, dict[str, Any]]:
    """Every client at every concurrency, `repeats` times.

    A run sends `events` events, or what it can in `max_seconds` (slow rows). Each run has
    a fresh process (rows interleaved), or, with `fresh_process_per_run=False` (quicker),
    each row's runs share one. Returns, per "client @ concurrency" row: CPU us per event,
    events/s, events counted and the sink's CPU share of a core (each a `Summary`), with
    the client and concurrency.
    """
    runs: dict[tuple[str, int], dict[str, list[float]]] = {}
    rounds, per_child = (repeats, 1) if fresh_process_per_run else (1, repeats)
    with ServerProcess("sink") as sink:
        for _ in range(rounds):
            for concurrency in concurrencies:
                for client in clients:  # interleaved, so drift spreads over all rows
                    sink_cpu = sink.cpu_seconds()
                    child = runner(
                        "benchmarks.delivery:measure_once",
                        {
                            "client": client,
                            "url": sink.url,
                            "events": events,
                            "concurrency": concurrency,
                            "max_seconds": max_seconds,
                            "runs": per_child,
                        },
                        timeout=per_child * (max_seconds + 60) + 60,
                    )["runs"]
                    # The sink's CPU per request, and the share of a core it needed at the
                    # rate measured: it must stay well under 100%.
                    requests = sum(r["delivered"] + r["warmup"] for r in child)
                    sink_us = (sink.cpu_seconds() - sink_cpu) / max(requests, 1) * 1e6
                    for result in child:
                        delivered = result["delivered"]
                        if not delivered:
                            raise RuntimeError(f"{client} @ {concurrency}: nothing delivered")
                        row = runs.setdefault((client, concurrency), {})
                        row.setdefault("cpu", []).append(result["cpu_s"] / delivered * 1e6)
                        row.setdefault("rate", []).append(delivered / result["wall_s"])
                        row.setdefault("events", []).append(delivered)
                        rate = delivered / result["wall_s"]
                        row.setdefault("sink", []).append(sink_us * rate / 1e6)
    results: dict[str, dict[str, Any]] = {}
    for (client, concurrency), row in runs.items():
        results[f"{client} @ {concurrency}"] = {
            "client": client,
            "concurrency": concurrency,
            "cpu_us_per_event": summarise(row["cpu"]),
            "events_per_s": summarise(row["rate"]),
            "events": summarise(row["events"]),
            "sink_core_share": summarise(row["sink"]),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--client", choices=list(CLIENTS), nargs="+", default=list(CLIENTS))
    parser.add_argument("--max-seconds", type=float, default=2.0)
    args = parser.parse_args()
    results = measure(args.events, args.repeats, args.concurrency, args.client, args.max_seconds)
    for name, row in results.items():
        cpu, rate, sink = row["cpu_us_per_event"], row["events_per_s"], row["sink_core_share"]
        print(
            f"{name:52s} {cpu['median']:7.1f} us/event ({cpu['min']:.1f}-{cpu['max']:.1f})"
            f"  {rate['median']:7.0f} events/s  sink {sink['median']:.0%} of a core"
            f"  ({row['events']['median']:.0f} events)"
        )


if __name__ == "__main__":
    main()
