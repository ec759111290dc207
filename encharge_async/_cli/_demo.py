"""`encharge-async demo`: a simulated web app sending events to the local emulator."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

import anyio

from .._client import AsyncEncharge
from ._options import add_verbose, int_at_least
from ._progress import Counters, Progress

__all__ = ["add_demo_parser"]

DEMO_KEY = "demo-write-key"


def add_demo_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="drive a simulated web app's events through the client into the local emulator",
        description=(
            "Start the local emulator with realistic latency and injected faults, send a few "
            "thousand events through AsyncEncharge as request handlers would, and report "
            "what happened. Needs no network and no Encharge account."
        ),
    )
    parser.add_argument(
        "--users",
        type=int_at_least(1),
        default=300,
        metavar="N",
        help="simulated people (default: 300)",
    )
    parser.add_argument(
        "--requests",
        type=int_at_least(1),
        default=3000,
        metavar="N",
        help="simulated requests, sign-ups included (default: 3000)",
    )
    parser.add_argument(
        "--concurrency",
        type=int_at_least(1),
        default=16,
        metavar="N",
        help="requests in flight at most (default: 16)",
    )
    parser.add_argument(
        "--seed", type=int, default=2026, help="for reproducible faults (default: 2026)"
    )
    add_verbose(parser, "verbose_demo")
    parser.set_defaults(handler=run_demo)


class _Timings:
    def __init__(self) -> None:
        self.enqueue_ns: list[int] = []

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.enqueue_ns)
        return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)] / 1000.0


async def _handle_request(
    client: AsyncEncharge, rng: random.Random, user: int, timings: _Timings
) -> None:
    """What a request handler would do: one or two tracking calls, never waiting on Encharge."""
    email = f"user{user}@example.com"
    user_id = f"u-{user}"
    roll = rng.random()
    start = time.perf_counter_ns()
    if roll < 0.08:
        await client.identify(
            email=email, user_id=user_id, user={"firstName": f"User {user}", "tags": "demo"}
        )
    elif roll < 0.10:
        await client.group(
            "company",
            {"externalId": f"co-{user % 20}", "name": f"Company {user % 20}"},
            user_id=user_id,
        )
    elif roll < 0.15:
        await client.track("Paid", user_id=user_id, properties={"amount": rng.randint(5, 500)})
    else:
        await client.track(
            "Viewed page", user_id=user_id, properties={"path": f"/docs/{rng.randint(1, 40)}"}
        )
    timings.enqueue_ns.append(time.perf_counter_ns() - start)


async def _demo(args: argparse.Namespace) -> int:
    from ..emulator import Emulator

    rng = random.Random(args.seed)
    timings = _Timings()
    emulator = Emulator(
        write_key=DEMO_KEY,
        seed=args.seed,
        latency=(0.005, 0.04),
        error_rate=0.03,
        rate_limited_rate=0.001,
        retry_after=1,
        drop_rate=0.005,
        drop_mode="after",
    )
    async with emulator:
        print(
            f"encharge-async demo: {args.requests:,} requests from {args.users:,} simulated "
            f"users into the local emulator at {emulator.url}\n"
            "  faults: 5-40 ms latency, 3% 5xx, 0.1% 429 with Retry-After, "
            "0.5% connections cut after the event was recorded\n"
        )
        client = AsyncEncharge(DEMO_KEY, endpoint=emulator.url, max_concurrency=args.concurrency)
        # Each sign-up is one of the requests: --requests 10 sends 10 events, whatever --users.
        signups = min(args.users, args.requests)
        counters = Counters(total=args.requests)
        progress = Progress(counters, stream=sys.stdout)

        def show(*, force: bool = False) -> None:
            stats = client.stats
            counters.delivered = stats.delivered
            counters.dead_lettered = stats.failed + stats.dropped
            counters.retried = stats.retried
            progress.update(force=force)

        async with client:
            # Sign-ups first, so every person exists before their other events.
            for user in range(signups):
                start = time.perf_counter_ns()
                await client.track(
                    "Registered user",
                    email=f"user{user}@example.com",
                    user_id=f"u-{user}",
                    user={"firstName": f"User {user}"},
                    properties={"plan": rng.choice(["Free", "Premium"])},
                )
                timings.enqueue_ns.append(time.perf_counter_ns() - start)
            for batch_start in range(signups, args.requests, 50):
                async with anyio.create_task_group() as requests:
                    for _ in range(min(50, args.requests - batch_start)):
                        requests.start_soon(
                            _handle_request, client, rng, rng.randrange(signups), timings
                        )
                await anyio.sleep(0.01)  # the next burst of requests
                show()
            while client.stats.queued or client.stats.in_flight:
                await client.flush(timeout=0.5)
                show()
            result = await client.aclose()
        now = time.monotonic()
        show()
        progress.finish(now)
        elapsed = counters.elapsed(now)
        stats = client.stats
        person = emulator.person(email="user7@example.com")
        duplicates = sum(emulator.duplicates.values())
        print(
            "\nsummary\n"
            f"  enqueued     {stats.enqueued:>8,}\n"
            f"  delivered    {stats.delivered:>8,}\n"
            f"  retried      {stats.retried:>8,}\n"
            f"  failed       {stats.failed:>8,}\n"
            f"  dropped      {stats.dropped:>8,}\n"
            f"  duplicates   {duplicates:>8,}  (resent after a cut connection; "
            "same Idempotency-Key)\n"
            f"  events/s     {counters.rate(now):>8,.0f}  ({elapsed:.1f} s)\n"
            f"  enqueue p50  {timings.percentile(0.5):>8.1f} us   "
            f"p99 {timings.percentile(0.99):.1f} us\n"
            f"  faults       {json.dumps(emulator.fault_counts)}\n"
        )
        print("one person, as the emulator sees them (user7@example.com):")
        record = person.to_dict() if person is not None else None
        if record is not None and len(record["events"]) > 8:
            record["events"] = [*record["events"][:8], f"... {len(record['events']) - 8} more"]
        print(json.dumps(record, indent=2))
        return 0 if result.complete and stats.failed == 0 and stats.dropped == 0 else 1


def run_demo(args: argparse.Namespace) -> int:
    try:
        from ..emulator import Emulator  # noqa: F401  (its extra's hint, before anything runs)
    except ImportError as exc:
        raise ImportError(
            "the demo needs the emulator: pip install 'encharge-async[emulator]'"
        ) from exc
    return anyio.run(_demo, args)
