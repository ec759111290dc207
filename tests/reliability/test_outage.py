"""Outage: the endpoint is down for longer than the client's retry deadline, then back.

- Without a spool, events can be lost, but never silently: every message id `track()`
  returned ends up exactly once as delivered (the emulator has it), failed (`on_error`) or
  dropped (`on_drop`), and those sets match `stats`. The outage (5xx) lasts over two retry
  deadlines, the queue overflows, and the endpoint is down again at shutdown.
- With a spool, nothing is lost across a restart: the client detects the outage (refused
  connections), spills to the spool, is shut down during the outage and keeps what it
  could not deliver; a new client on the same spool, once the endpoint is back, delivers
  all of it, first, per-person order kept.

Three library bugs were found here, all fixed since: a client living through the outage
failed the events it held in memory; spilled events were reported dropped at shutdown;
per-person order broke across a restart when spilling began while older events of the
same person were in memory.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import tenacity

from encharge_async import AsyncEncharge, DeliveryError, DropReason, Event
from encharge_async.emulator import Emulator, EventRecord

from ..conftest import wait_drained, wait_until
from .conftest import Stopwatch, collect_logs, summary

pytestmark = [
    pytest.mark.slow,  # soak, fault and crash tests: the full suite runs them
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
]

KEY = "wk-outage-0123456789"
RETRY_DEADLINE = 0.3  # max_retry_time of the clients
OUTAGE = 0.8  # seconds the endpoint is down: over two retry deadlines
RESTART_RETRY_DEADLINE = 1.0  # that of the client shut down during the outage (in < 0.7 s)
RESTART_OUTAGE = 1.3
PACE = 0.05  # seconds between bursts of events
BURST = 10
PEOPLE = 10


def _client(url: str, **options: Any) -> AsyncEncharge:
    options.setdefault("max_retry_time", RETRY_DEADLINE)
    options.setdefault("max_retries", 10_000)
    options.setdefault("retry_wait", tenacity.wait_random(0, 0.02))
    options.setdefault("max_concurrency", 4)
    options.setdefault("shutdown_timeout", 0.3)
    return AsyncEncharge(KEY, endpoint=url, **options)


class Ledger:
    """What the hooks reported, by message id."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.failed: list[str] = []
        self.dropped: list[tuple[str, DropReason]] = []

    def on_delivered(self, event: Event) -> None:
        self.delivered.append(event.message_id)

    def on_error(self, error: DeliveryError) -> None:
        self.failed.append(error.message_id)

    def on_drop(self, event: Event, reason: DropReason) -> None:
        self.dropped.append((event.message_id, reason))

    def hooks(self) -> dict[str, Any]:
        return {
            "on_delivered": self.on_delivered,
            "on_error": self.on_error,
            "on_drop": self.on_drop,
        }


async def _send_for(client: AsyncEncharge, seconds: float, ids: list[str]) -> None:
    """Bursts of events for PEOPLE people, every PACE seconds, for `seconds`."""
    with anyio.move_on_after(seconds):
        while True:
            for _ in range(BURST):
                n = len(ids)
                ids.append(
                    await client.track("Step", user_id=f"p{n % PEOPLE}", properties={"n": n})
                )
            await anyio.sleep(PACE)  # the app's pace, on purpose


def _first_arrivals_in_order(records: list[EventRecord]) -> bool:
    arrived: dict[str, list[int]] = defaultdict(list)
    seen: set[str | None] = set()
    for record in sorted(records, key=lambda r: r.seq):
        if record.idempotency_key not in seen:
            seen.add(record.idempotency_key)
            arrived[record.body["user"]["userId"]].append(record.body["properties"]["n"])
    return all(sequence == sorted(sequence) for sequence in arrived.values())


async def test_without_a_spool_every_event_is_accounted_for_exactly_once() -> None:
    clock = Stopwatch()
    ledger = Ledger()
    ids: list[str] = []
    async with Emulator(write_key=KEY, error_rate=1.0, error_statuses=(503,)) as emulator:
        client = _client(emulator.url, max_queue_size=40, **ledger.hooks())
        async with client:
            await _send_for(client, OUTAGE, ids)  # down: failures (deadline), full queue
            emulator.faults.error_rate = 0.0
            await _send_for(client, 0.3, ids)  # back up
            flushed = await client.flush(timeout=10)
            emulator.faults.error_rate = 1.0  # down again at shutdown: shutdown drops
            await _send_for(client, 0.1, ids)
        stats = client.stats
        accepted = Counter(record.idempotency_key for record in emulator.events)

    assert flushed.complete
    delivered, failed = set(ledger.delivered), set(ledger.failed)
    dropped = {mid for mid, _ in ledger.dropped}
    # Each id exactly once, in exactly one of the three outcomes.
    assert len(ledger.delivered) == len(delivered)
    assert len(ledger.failed) == len(failed)
    assert len(ledger.dropped) == len(dropped)
    assert not delivered & failed
    assert not delivered & dropped
    assert not failed & dropped
    assert delivered | failed | dropped == set(ids)
    assert len(set(ids)) == len(ids)
    # What the emulator accepted is what on_delivered reported, each once.
    assert set(accepted) == delivered
    assert set(accepted.values()) == {1}
    # stats says the same as the hooks.
    assert (stats.delivered, stats.failed, stats.dropped) == (
        len(delivered),
        len(failed),
        len(dropped),
    )
    assert stats.queued == stats.in_flight == 0
    reasons = Counter(reason for _, reason in ledger.dropped)
    # Every call that returned an id counts as enqueued, refused at the door or not.
    assert stats.enqueued == len(ids)
    assert stats.enqueued == stats.delivered + stats.failed + stats.dropped
    # The scenario really exercised every outcome.
    assert delivered
    assert failed
    assert reasons[DropReason.QUEUE_FULL] > 0
    assert reasons[DropReason.SHUTDOWN] > 0
    summary(
        "outage, no spool",
        outage_s=OUTAGE,
        retry_deadline_s=RETRY_DEADLINE,
        events=len(ids),
        delivered=len(delivered),
        failed=len(failed),
        dropped_queue_full=reasons[DropReason.QUEUE_FULL],
        dropped_shutdown=reasons[DropReason.SHUTDOWN],
        unaccounted=len(set(ids) - delivered - failed - dropped),
        seconds=clock.elapsed,
    )


async def _outage_then_shutdown(path: Path, ledger: Ledger, ids: list[str]) -> AsyncEncharge:
    """A client on a spool sends into a dead endpoint, detects the outage, shuts down.

    A probe event (person "probe") fails until the client declares an outage and spills
    new events to the spool; only then are the PEOPLE events sent (an event that reached
    memory before the spilling began loses its place at shutdown: the bug of
    test_order_is_kept_across_a_restart_when_spilling_began_with_events_in_memory). The
    client shuts down within the retry deadline of the probe (a client that lives through
    the deadline fails the event: the bug of the last test). Returns the client, closed.
    """
    emulator = Emulator(write_key=KEY)
    await emulator.start()
    down_url = emulator.url
    await emulator.stop()  # down: nothing listens there, connections are refused
    client = _client(
        down_url,
        spool=path,
        spool_after=0.05,
        max_retry_time=RESTART_RETRY_DEADLINE,
        shutdown_timeout=0.1,
        **ledger.hooks(),
    )
    with collect_logs("encharge_async") as logs:
        async with client:
            ids.append(await client.track("Probe", user_id="probe", properties={"n": -1}))
            await wait_until(
                lambda: any("spilling new events" in r.getMessage() for r in logs.records), 0.3
            )
            await _send_for(client, 0.2, ids)
    return client


async def test_with_a_spool_nothing_is_lost_across_a_restart(tmp_path: Path) -> None:
    clock = Stopwatch()
    path = tmp_path / "outage.spool"
    ledger = Ledger()
    ids: list[str] = []
    down_since = anyio.current_time()
    first = await _outage_then_shutdown(path, ledger, ids)
    closed = await first.aclose()  # closed already: the same result again
    # Still down, with no client running, until the outage has lasted RESTART_OUTAGE.
    await anyio.sleep(down_since + RESTART_OUTAGE - anyio.current_time())  # what is tested

    # Back up; a new client on the same spool.
    async with Emulator(write_key=KEY) as emulator:
        second = _client(emulator.url, spool=path, **ledger.hooks())
        async with second:
            await second.track("After restart", user_id="p0", properties={"n": len(ids)})
            await wait_drained(second)
        records = emulator.events

    accepted = Counter(record.idempotency_key for record in records)
    assert not ledger.failed
    assert closed.spooled == len(ids)  # the spool kept every event
    assert set(ids) <= set(accepted), f"lost: {len(set(ids) - set(accepted))}"
    assert set(accepted.values()) == {1}
    assert _first_arrivals_in_order([r for r in records if r.name != "Probe"])
    assert records[-1].name == "After restart"  # the spooled events went first
    # Events spilled to disk are also reported dropped at shutdown although the spool kept
    # them (the bug of test_events_kept_in_the_spool_are_not_reported_as_dropped).
    misreported = {mid for mid, _ in ledger.dropped}
    assert misreported <= set(accepted)
    summary(
        "outage, spool, restart",
        outage_s=RESTART_OUTAGE,
        retry_deadline_s=RESTART_RETRY_DEADLINE,
        events=len(ids),
        spooled_at_shutdown=closed.spooled,
        delivered_after_restart=len(set(ids) & set(accepted)),
        duplicates=sum(accepted.values()) - len(accepted),
        lost=len(set(ids) - set(accepted)),
        reported_dropped_yet_kept=len(misreported),
        seconds=clock.elapsed,
    )


async def test_events_kept_in_the_spool_are_not_reported_as_dropped(tmp_path: Path) -> None:
    ledger = Ledger()
    ids: list[str] = []
    client = await _outage_then_shutdown(tmp_path / "outage.spool", ledger, ids)
    closed = await client.aclose()
    assert closed.spooled == len(ids)
    assert ledger.failed == []
    assert (closed.dropped, client.stats.dropped, ledger.dropped) == (0, 0, [])
    assert client.stats.spooled == closed.spooled


async def test_order_is_kept_across_a_restart_when_spilling_began_with_events_in_memory(
    tmp_path: Path,
) -> None:
    path = tmp_path / "order.spool"
    dead = Emulator(write_key=KEY, latency=3600)  # never answers
    async with (
        dead,
        _client(
            dead.url, spool=path, max_queue_size=2, max_concurrency=1, shutdown_timeout=0.1
        ) as client,
    ):

        def placed(client: AsyncEncharge, n: int) -> bool:
            stats = client.stats
            # White-box: the spool writer has caught up. Events that find more than
            # max_queue_size events waiting for the disk are dropped (QUEUE_FULL), and no
            # public API tells when the writer is done. (`spooled` counts only the events
            # whose one copy is on disk: event 0, in flight, is not one of them even if it
            # was spilled while the spool was being read at start.)
            spooler = client._pipeline.spooler
            assert spooler is not None
            settled = (stats.in_flight, stats.queued, stats.spooled)
            return settled == (1, min(n, 2), max(n - 2, 0)) and not spooler.writer.busy

        for n in range(6):  # 0 in flight, 1-2 in memory, 3-5 spilled (the queue is full)
            await client.track("Step", user_id="p0", properties={"n": n})
            await wait_until(partial(placed, client, n))
    async with Emulator(write_key=KEY) as emulator:
        async with _client(emulator.url, spool=path) as again:
            await wait_drained(again, 10)
        arrived = [record.body["properties"]["n"] for record in emulator.events]
    assert sorted(set(arrived)) == list(range(6))  # nothing lost...
    assert arrived == list(range(6))  # ...and in order (it once came [0, 3, 4, 5, 1, 2])


async def test_with_a_spool_a_client_living_through_the_outage_loses_nothing(
    tmp_path: Path,
) -> None:
    ledger = Ledger()
    ids: list[str] = []
    async with Emulator(write_key=KEY, error_rate=1.0, error_statuses=(503,)) as emulator:
        client = _client(
            emulator.url, spool=tmp_path / "live.spool", spool_after=0.05, **ledger.hooks()
        )
        async with client:
            await _send_for(client, OUTAGE, ids)
            emulator.faults.error_rate = 0.0
            await wait_drained(client)
        accepted = {record.idempotency_key for record in emulator.events}
    summary(
        "outage, spool, live",
        outage_s=OUTAGE,
        retry_deadline_s=RETRY_DEADLINE,
        events=len(ids),
        failed=len(ledger.failed),
        lost=len(set(ids) - accepted),
    )
    assert ledger.failed == []
    assert set(ids) <= accepted
