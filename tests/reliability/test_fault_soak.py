"""Fault soak: thousands of events through a faulty emulator over real sockets.

The emulator runs in a child process (so it does not share the client's core) with, per
request: 5% 429 with `Retry-After: 0`, 20% 5xx, 2% cut connections (the drop mode alternates
between "before" and "after" every 50 ms), 0.1% of accepted events answered with a body that
stalls past the client's timeout (the 200's head arrives: the default transport counts the
event as delivered, issue 12), and 0-4 ms of random latency. The client retries fast.

Checked: every message id `track()` returned was accepted (none lost); per person, the
order of first arrival is the order of enqueueing; every duplicate is explained by an
ambiguous failure of an earlier copy (a connection cut after the event was recorded, or a
client-side timeout), and every ambiguous failure led to exactly the retry it should.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import tenacity

from encharge_async import AsyncEncharge, DeliveryError

from .conftest import Stopwatch, child_emulator, collect_logs, summary

pytestmark = [
    pytest.mark.slow,  # soak, fault and crash tests: the full suite runs them
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
]

#: Events sent. The issue asks for 20,000, but delivery is bound by the client's CPU
#: (~1,100-1,400 events/s with the faults' retries, on 2 shared cores): 20,000 take
#: ~15-18 s, over this test's share of the reliability tests' 40 s budget. 10,000 take
#: ~8-10 s. Raise it to soak longer locally.
SOAK_EVENTS = 10_000
PEOPLE = 200
KEY = "wk-soak-0123456789"
SEED = 20261126

# Marginal rates per request. The emulator decides 429, then 5xx, then a cut, each among
# the requests the previous one spared: the rates it is given are scaled to match.
RATE_429 = 0.05
RATE_5XX = 0.20
RATE_DROP = 0.02
FAULTS: dict[str, Any] = {
    "seed": SEED,
    "rate_limited_rate": RATE_429,
    "retry_after": 0,
    "error_rate": RATE_5XX / (1 - RATE_429),
    "drop_rate": RATE_DROP / (1 - RATE_429 - RATE_5XX),
    "latency": [0.0, 0.004],
    "slow_body": 1.0,  # longer than the client's timeout; the 200's head is what counts
    "slow_body_rate": 0.001,
    "flip_drop_mode_every": 0.05,
}
CLIENT_TIMEOUT = 0.5
SOAK_DEADLINE = 90.0  # bound on the whole delivery; it takes ~15 s

AMBIGUOUS_FAULTS = ("drop_after",)


def _person(n: int) -> str:
    return f"p{n % PEOPLE}"


async def _enqueue(client: AsyncEncharge, n: int) -> str:
    """Event n: mostly tracks, some identifies and group updates, all about one person."""
    person = _person(n)
    if n % 11 == 0:
        return await client.group(
            "company",
            {"externalId": f"c{n % 7}", "n": n},
            user_id=person,
        )
    if n % 7 == 0:
        return await client.identify(user_id=person, user={"n": n, "plan": "pro"})
    return await client.track("Step", user_id=person, properties={"n": n})


def _number(body: dict[str, Any]) -> int:
    holder = body["user"] if body.get("name") == "identify" else body["properties"]
    return int(holder["n"])


async def test_fault_soak_loses_nothing_keeps_order_and_explains_duplicates(
    tmp_path: Path,
) -> None:
    clock = Stopwatch()
    errors: list[DeliveryError] = []
    drops: list[str] = []
    async with child_emulator(tmp_path, KEY, **FAULTS) as emulator:
        client = AsyncEncharge(
            KEY,
            endpoint=emulator.url,
            max_queue_size=SOAK_EVENTS,
            max_concurrency=32,
            max_retries=200,
            max_retry_time=SOAK_DEADLINE,
            timeout=CLIENT_TIMEOUT,
            retry_wait=tenacity.wait_random(0, 0.005),
            shutdown_timeout=5,
            on_error=errors.append,
            on_drop=lambda event, reason: drops.append(event.message_id),
        )
        ids: list[str] = []
        with collect_logs("encharge_async") as logs:
            async with client:
                for n in range(SOAK_EVENTS):
                    ids.append(await _enqueue(client, n))
                    if n % 200 == 199:
                        await anyio.lowlevel.checkpoint()  # an app's loop turns between requests
                queued_at = clock.elapsed
                result = await client.flush(timeout=SOAK_DEADLINE)
                delivered_at = clock.elapsed
        stats = client.stats
        records = await emulator.events()
        rejected = await emulator.rejected()
        emulator_stats = await emulator.stats()

    assert result.complete, f"not delivered within {SOAK_DEADLINE}s: {result}"
    assert (errors, drops) == ([], [])
    assert (stats.delivered, stats.failed, stats.dropped) == (SOAK_EVENTS, 0, 0)

    # None lost, nothing unknown: the accepted keys are exactly the ids track() returned.
    copies = Counter(record["idempotency_key"] for record in records)
    assert len(set(ids)) == SOAK_EVENTS
    assert set(copies) == set(ids), "lost: " + repr(sorted(set(ids) - set(copies))[:10])

    # Every accepted body is the event that was enqueued under that id.
    index = {mid: n for n, mid in enumerate(ids)}
    for record in records:
        n = index[record["idempotency_key"]]
        assert _number(record["body"]) == n
        assert record["body"]["user"]["userId"] == _person(n)

    # Per person, the order of first arrival is the order of enqueueing.
    first_arrival: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for record in sorted(records, key=lambda r: r["seq"]):
        key = record["idempotency_key"]
        if key not in seen:
            seen.add(key)
            first_arrival[record["body"]["user"]["userId"]].append(index[key])
    assert len(first_arrival) == PEOPLE
    for person, arrived in first_arrival.items():
        assert arrived == sorted(arrived), f"{person} out of order"

    # Duplicates: only retries after an ambiguous failure. Client-side timeouts are read
    # from the client's DEBUG retry records (they carry the message id).
    timeouts: Counter[str] = Counter(
        getattr(record, "message_id", "")
        for record in logs.records
        if "no answer within timeout" in record.getMessage()
    )
    ambiguous: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        if record["fault"] is not None:
            ambiguous[record["idempotency_key"]][record["fault"]] += 1
    for key, count in copies.items():
        extra = count - 1
        cut = ambiguous[key]["drop_after"]
        # Each copy whose answer was lost was followed by another accepted copy (a 200 whose
        # body stalls is not lost: its head arrived)...
        assert extra >= cut, f"{key}: an ambiguous failure was not retried"
        # ...and each extra copy follows a copy whose answer was lost.
        assert extra <= cut + timeouts[key], f"{key}: unexplained duplicate"
    # The last accepted copy of every event is one whose answer (head) the client got.
    last: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r["seq"]):
        last[record["idempotency_key"]] = record
    assert all(record["fault"] in (None, "slow_body") for record in last.values())

    faults = emulator_stats["faults"]
    duplicates = sum(copies.values()) - len(copies)
    assert emulator_stats["duplicates"] == duplicates
    dup_after_cut = sum(min(copies[k] - 1, ambiguous[k]["drop_after"]) for k in copies)
    requests = len(records) + len(rejected)
    # Each kind of fault really happened, at about the rate asked for.
    for kind, rate in (("rate_limited", RATE_429), ("error", RATE_5XX)):
        assert 0.5 * rate < faults[kind] / requests < 1.5 * rate, (kind, faults, requests)
    drops_seen = faults["drop_before"] + faults["drop_after"]
    assert 0.5 * RATE_DROP < drops_seen / requests < 1.5 * RATE_DROP, faults
    assert faults["drop_before"] > 0
    assert faults["drop_after"] > 0
    assert faults["slow_body"] > 0
    summary(
        "fault soak",
        events=SOAK_EVENTS,
        people=PEOPLE,
        requests=requests,
        http_429=faults["rate_limited"],
        http_5xx=faults["error"],
        cut_before=faults["drop_before"],
        cut_after=faults["drop_after"],
        slow_body=faults["slow_body"],
        client_timeouts=sum(timeouts.values()),
        retried=stats.retried,
        delivered=len(copies),
        duplicates=duplicates,
        duplicates_after_cut=dup_after_cut,
        duplicates_after_timeout=duplicates - dup_after_cut,
        lost=len(set(ids) - set(copies)),
        out_of_order=0,
        queued_s=queued_at,
        delivered_s=delivered_at,
        seconds=clock.elapsed,
    )
