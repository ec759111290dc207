"""The client with a durable spool: overflow, outage, shutdown, resume, always mode."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import tenacity

from encharge_async import (
    AsyncEncharge,
    ConfigurationError,
    DeliveryError,
    DropReason,
    SpoolError,
    SpoolLockedError,
)
from encharge_async.testing import EnchargeRecorder

from .conftest import ENDPOINT, WRITE_KEY, ClientFactory, Recorder, assert_adds_up, wait_until

pytestmark = pytest.mark.anyio


def writer_busy(client: AsyncEncharge) -> bool:
    spooler = client._pipeline.spooler
    assert spooler is not None
    return spooler.writer.busy


def order_by_person(bodies: list[dict[str, Any]]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for body in bodies:
        seen[str(body["user"]["userId"])].append(body["properties"]["n"])
    return seen


@pytest.mark.slow
async def test_a_full_queue_spills_to_the_spool_instead_of_dropping(
    make_client: ClientFactory, held: EnchargeRecorder, tmp_path: Path
) -> None:
    drops: list[DropReason] = []
    async with make_client(
        transport=held,
        max_concurrency=2,
        max_queue_size=10,
        spool=tmp_path / "events.spool",
        on_drop=lambda event, reason: drops.append(reason),
    ) as client:
        spooler = client._pipeline.spooler  # white-box: when the disk has caught up
        assert spooler is not None
        for n in range(200):
            await client.track("Step", user_id=f"p{n % 5}", properties={"n": n})
            if n % 10 == 9:
                # Events that find max_queue_size events waiting for the disk are dropped
                # (the memory bound), so let the writer catch up between bursts, as a live
                # app's loop would, however loaded the machine (white-box: nothing public
                # says when the writer is done).
                await wait_until(lambda: not writer_busy(client))
        await wait_until(lambda: client.stats.spooled > 150)
        assert client.stats.queued <= 10
        held.release()
        result = await client.flush(timeout=20)
    assert result.delivered == 200
    assert drops == []
    assert client.stats.delivered == 200
    for sequence in order_by_person(held.bodies).values():
        assert sequence == sorted(sequence)  # per-person order through memory and disk


@pytest.mark.slow
async def test_shutdown_keeps_undelivered_events_for_the_next_start(
    make_client: ClientFactory, held: EnchargeRecorder, tmp_path: Path
) -> None:
    path = tmp_path / "events.spool"
    drops: list[DropReason] = []
    client = make_client(
        transport=held,
        spool=path,
        shutdown_timeout=0.05,  # the held recorder never answers: kept at the deadline
        on_drop=lambda event, reason: drops.append(reason),
    )
    async with client:
        ids = [await client.track("Step", user_id="p", properties={"n": n}) for n in range(20)]
    result = await client.aclose()  # again: the result of the first close
    assert (result.dropped, result.spooled) == (0, 20)
    assert drops == []

    recorder = Recorder()
    async with make_client(transport=httpx.MockTransport(recorder), spool=path) as resumed:
        await resumed.track("After restart", user_id="p", properties={"n": 20})
        await resumed.flush(timeout=10)
    assert [r.headers["idempotency-key"] for r in recorder.requests[:20]] == ids
    assert [b["properties"]["n"] for b in recorder.bodies] == list(range(21))
    assert resumed.stats.spooled == 0


@pytest.mark.slow
async def test_outage_moves_new_events_to_disk_and_resumes_after(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    healthy = False

    def flaky(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if healthy else 503)

    import tenacity

    async with make_client(
        transport=httpx.MockTransport(Recorder(flaky)),
        max_concurrency=2,
        spool=tmp_path / "s.spool",
        spool_after=0.05,
        retry_wait=tenacity.wait_fixed(0.02),
        max_retry_time=60,
        max_retries=10_000,
    ) as client:
        await client.track("first", user_id="a", properties={"n": -1})
        # Failing for longer than spool_after (an outage): 6 retries 0.02 s apart mean that a
        # failure landed more than 0.05 s after the first one.
        await wait_until(lambda: client.stats.retried >= 6)
        for n in range(300):
            await client.track("Step", user_id=f"p{n % 3}", properties={"n": n})
            if n % 10 == 0:
                await anyio.sleep(0.005)  # a live app's loop turns (see above)
        await wait_until(lambda: client.stats.spooled >= 290)  # the spool writer caught up
        during = client.stats
        healthy = True
        result = await client.flush(timeout=20)
    assert during.queued <= 2 * 2 + 1
    assert during.spooled >= 290
    assert result.delivered == 301
    assert client.stats.dropped == 0


async def test_always_mode_makes_track_durable_before_it_returns(
    make_client: ClientFactory, held: EnchargeRecorder, tmp_path: Path
) -> None:
    async with make_client(
        transport=held, spool=tmp_path / "s.spool", spool_mode="always"
    ) as client:
        for n in range(5):
            await client.track("Step", user_id="p", properties={"n": n})
            # White-box: no public API tells "committed to disk" from "handed to the writer".
            assert client._pipeline.spooler is not None
            assert not client._pipeline.spooler.writer.pending
        stats = client.stats
        # In memory and on disk: counted once, where the memory copy is (queued, in flight).
        assert (stats.queued + stats.in_flight, stats.spooled) == (5, 0)
        held.release()
        await client.flush(timeout=5)
    # Acknowledged once delivered: the closed spool holds nothing.
    assert (await client.aclose()).spooled == 0
    assert [b["properties"]["n"] for b in held.bodies] == list(range(5))


@pytest.mark.slow
async def test_expired_events_are_reported_as_dropped(
    held: EnchargeRecorder, tmp_path: Path
) -> None:
    path = tmp_path / "s.spool"
    async with AsyncEncharge(
        WRITE_KEY, endpoint=ENDPOINT, transport=held, spool=path, shutdown_timeout=0.1
    ) as client:
        await client.track("Old", user_id="p")
    drops: list[tuple[str, DropReason]] = []
    recorder = Recorder()
    async with AsyncEncharge(
        WRITE_KEY,
        endpoint=ENDPOINT,
        transport=httpx.MockTransport(recorder),
        spool=path,
        spool_max_age=0.001,
        on_drop=lambda event, reason: drops.append((event.name, reason)),
    ) as client:
        await client.track("New", user_id="p", wait=True)
    assert drops == [("Old", DropReason.EXPIRED)]
    assert recorder.names() == ["New"]


@pytest.mark.slow
async def test_a_locked_spool_is_a_clear_error_at_start(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    async with AsyncEncharge(WRITE_KEY, transport=httpx.MockTransport(Recorder()), spool=path):
        second = AsyncEncharge(WRITE_KEY, transport=httpx.MockTransport(Recorder()), spool=path)
        with pytest.raises(SpoolLockedError, match=r"\{slot\}"):
            await second.__aenter__()
        with pytest.raises(SpoolError):
            raise SpoolLockedError(path, None)


async def test_a_broken_spool_path_falls_back_to_memory_when_started_lazily(
    make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    client = make_client(spool=blocker / "s.spool")
    await client.track("E", user_id=1)  # started without __aenter__: errors are logged
    result = await client.flush(timeout=5)
    await client.aclose()
    assert result.delivered == 1
    assert any(
        r.levelno == logging.ERROR and "memory only" in r.getMessage() for r in caplog.records
    )


def test_spool_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="spool must be a file path"):
        AsyncEncharge(WRITE_KEY, spool=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="spool must be a file path, got an empty"):
        AsyncEncharge(WRITE_KEY, spool=" ")
    with pytest.raises(ConfigurationError, match="spool_mode must be"):
        AsyncEncharge(WRITE_KEY, spool="x", spool_mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="spool_after"):
        AsyncEncharge(WRITE_KEY, spool="x", spool_after=0)


@pytest.mark.slow
async def test_waiters_of_events_kept_in_the_spool_are_told(
    make_client: ClientFactory, held: EnchargeRecorder, tmp_path: Path
) -> None:
    client = make_client(transport=held, spool=tmp_path / "s.spool", shutdown_timeout=0.1)
    errors: list[DeliveryError] = []

    async def waiter() -> None:
        try:
            await client.track("E", user_id=1, wait=True, timeout=10)
        except DeliveryError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await held.wait_for_requests(1)
        await client.aclose()
    assert len(errors) == 1
    assert "kept in the spool" in str(errors[0])


CRASH_CHILD = textwrap.dedent(
    """
    import asyncio, sys, httpx
    from encharge_async import AsyncEncharge

    async def main():
        async def never(request):
            await asyncio.sleep(3600)  # a server that never answers, on purpose
        client = AsyncEncharge("k", endpoint="http://127.0.0.1:9/v1/",
                               transport=httpx.MockTransport(never),
                               spool=sys.argv[1], spool_mode="always")
        async with client:
            for n in range(10_000):
                mid = await client.track("Step", user_id=f"p{n % 4}", properties={"n": n})
                print(mid, flush=True)  # acknowledged to the caller: must survive kill -9
    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_kill_9_loses_nothing_acknowledged_in_always_mode(tmp_path: Path) -> None:
    path = tmp_path / "crash.spool"
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            acknowledged.append(line.strip())
            if len(acknowledged) == 300:
                os.kill(child.pid, signal.SIGKILL)
                break
        acknowledged.extend(line.strip() for line in child.stdout if line.strip())
    finally:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()

    async def resume() -> list[str]:
        recorder = Recorder()
        async with AsyncEncharge(
            WRITE_KEY, endpoint=ENDPOINT, transport=httpx.MockTransport(recorder), spool=path
        ) as client:
            await wait_until(
                lambda: not (client.stats.spooled or client.stats.queued or client.stats.in_flight),
                timeout=30,
            )
        bodies: list[dict[str, Any]] = recorder.bodies
        per_person: dict[str, list[int]] = defaultdict(list)
        for body in bodies:
            per_person[body["user"]["userId"]].append(body["properties"]["n"])
        for sequence in per_person.values():
            assert sequence == sorted(sequence)
        return [r.headers["idempotency-key"] for r in recorder.requests]

    delivered = anyio.run(resume)
    assert set(acknowledged) <= set(delivered)  # nothing acknowledged was lost
    assert len(delivered) == len(set(delivered))
    assert json.dumps(delivered)  # well-formed ids


@pytest.mark.slow
async def test_tampered_spool_rows_never_reach_the_wire(tmp_path: Path) -> None:
    """A spool file is data from disk, not trusted: a message id with CR/LF must not become
    request headers, and a body that is not an event must not be sent. Both are removed."""
    import time

    from encharge_async._spool import Spool, SpooledEvent

    path = tmp_path / "s.spool"
    now = time.time()
    spool = await Spool.open(path)
    await spool.append(
        [
            SpooledEvent(
                "id-1\r\nX-Injected: yes",
                "E",
                b'{"name":"E","user":{"userId":"1"}}',
                ("u:1",),
                now,
            ),
            SpooledEvent("id-2", "E", b"not json at all", ("u:2",), now),
            SpooledEvent("id-3", "E", b'{"name":"E","user":{"userId":"3"}}', ("u:3",), now),
        ]
    )
    await spool.close()
    recorder = Recorder()
    async with AsyncEncharge(
        WRITE_KEY, endpoint=ENDPOINT, transport=httpx.MockTransport(recorder), spool=path
    ) as client:
        await wait_until(lambda: client.stats.spooled == 0 and len(recorder.requests) >= 1)
    assert [r.headers["idempotency-key"] for r in recorder.requests] == ["id-3"]
    assert all("x-injected" not in r.headers for r in recorder.requests)
    stats = client.stats
    # Taken over from the file (enqueued); the two it cannot read back count as failed.
    assert (stats.enqueued, stats.delivered, stats.failed) == (3, 1, 2)
    assert_adds_up(stats)


async def test_a_failing_spool_never_hands_hooks_an_emptied_event(
    held: EnchargeRecorder, tmp_path: Path
) -> None:
    """Spilled events whose only copy is on disk are read back when the spool stops taking
    writes (a full disk): delivered, never dropped with an empty body."""
    from encharge_async._spool import Spool, SpoolError

    stored = 0
    failing = anyio.Event()

    class FullDisk(Spool):
        async def append(self, events: Any, *, front: bool = False) -> Any:
            nonlocal stored
            if failing.is_set():
                raise SpoolError("disk full (injected)")
            result = await super().append(events, front=front)
            stored += len(events)
            return result

    spool = await FullDisk.open(tmp_path / "s.spool")
    hooked: list[bytes] = []
    async with AsyncEncharge(
        WRITE_KEY,
        endpoint=ENDPOINT,
        transport=held,
        spool=spool,
        max_queue_size=2,
        max_concurrency=1,
        on_drop=lambda event, reason: hooked.append(event.body),
        on_delivered=lambda event: hooked.append(event.body),
    ) as client:
        for n in range(10):
            await client.track("Step", user_id="p", properties={"n": n})
            # One at a time, so the writer keeps up: in memory, or spilled and on disk.
            await wait_until(
                lambda n=n: stored + client.stats.queued + client.stats.in_flight > n  # type: ignore[misc]
            )
        assert stored >= 5  # spilled: their only copy is on disk now
        failing.set()
        await client.track("Step", user_id="p", properties={"n": 10})
        held.release()
        result = await client.flush(timeout=10)
    assert result.dropped == 0
    assert all(body for body in hooked)
    assert sorted(json.loads(b)["properties"]["n"] for b in hooked) == list(range(11))
    assert order_by_person(held.bodies)["p"] == list(range(11))


@pytest.mark.slow
async def test_flush_delivers_what_an_earlier_process_left(
    make_client: ClientFactory, held: EnchargeRecorder, tmp_path: Path
) -> None:
    """A "start, flush, close" script on a spool holding an earlier process's events must
    not leave them on disk: flush() waits for them too."""
    path = tmp_path / "events.spool"
    async with make_client(transport=held, spool=path, shutdown_timeout=0.05) as first:
        for n in range(30):
            await first.track("Step", user_id=f"p{n % 3}", properties={"n": n})
    assert (await first.aclose()).spooled == 30

    recorder = Recorder()
    async with make_client(transport=httpx.MockTransport(recorder), spool=path) as second:
        result = await second.flush(timeout=10)
        assert (result.delivered, result.pending) == (30, 0)
        assert second.stats.spooled == 0
    assert sorted(b["properties"]["n"] for b in recorder.bodies) == list(range(30))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["overflow", "always"])
@pytest.mark.parametrize("otel", [False, True], ids=["plain", "otel"])
async def test_a_restart_during_an_outage_retries_resumed_events(
    tmp_path: Path, mode: str, otel: bool
) -> None:
    """Events an earlier process already tried (attempts > 0) retry and deliver like fresh
    ones: none fails for an internal error, no person's lane stays held."""
    import time

    from encharge_async._builders import build_track
    from encharge_async._spool import Spool, SpooledEvent

    path = tmp_path / "events.spool"
    spool = await Spool.open(path)
    stored = [
        SpooledEvent.from_event(build_track("Step", None, "p", None, {"n": n}, None, 10_000))
        for n in range(5)
    ]
    await spool.append(
        [
            SpooledEvent(e.message_id, e.name, e.body, e.keys, time.time(), attempts=3)
            for e in stored
        ]
    )
    await spool.close()

    recorder = EnchargeRecorder()
    recorder.fail_next(503, count=5, attempts=2)  # the outage goes on after the restart
    errors: list[DeliveryError] = []
    client = AsyncEncharge(
        WRITE_KEY,
        endpoint=ENDPOINT,
        transport=recorder,
        spool=path,
        spool_mode=mode,  # type: ignore[arg-type]
        retry_wait=tenacity.wait_none(),
        on_error=errors.append,
    )
    uninstrument = None
    if otel:
        from opentelemetry.sdk.metrics import MeterProvider

        from encharge_async.otel import instrument

        uninstrument = instrument(client, meter_provider=MeterProvider())
    async with client:
        await client.track("After", user_id="p", properties={"n": 5})
        result = await client.flush(timeout=10)
    if uninstrument is not None:
        uninstrument()
    assert errors == []
    assert result.failed == 0
    assert [b["properties"]["n"] for b in recorder.bodies] == list(range(6))
    assert client.stats.spooled == 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["overflow", "always"])
async def test_each_event_counts_once_through_an_outage_a_restart_and_the_resume(
    tmp_path: Path, mode: str
) -> None:
    """Spilled during an outage, kept at shutdown, resumed by the next process: at every
    step `enqueued == delivered + failed + dropped + queued + in_flight + spooled`, and
    `spooled` counts the events only the disk holds."""
    path = tmp_path / "events.spool"
    options: dict[str, Any] = {
        "endpoint": ENDPOINT,
        "spool": path,
        "spool_mode": mode,
        "spool_after": 0.05,
        "max_concurrency": 1,  # at most 2 events in memory during the outage
        "retry_wait": tenacity.wait_fixed(0.02),
        "max_retries": 10_000,
    }
    down = Recorder(lambda request: httpx.Response(503))
    first = AsyncEncharge(
        WRITE_KEY, transport=httpx.MockTransport(down), shutdown_timeout=0.1, **options
    )
    async with first:
        await first.track("Step", user_id="p", properties={"n": 0})
        # Failing for longer than spool_after: 4 retries 0.02 s apart span more than 0.05 s.
        await wait_until(lambda: first.stats.retried >= 4)
        for n in range(1, 30):
            await first.track("Step", user_id="p", properties={"n": n})
            assert_adds_up(first.stats)
        # Spilled: all but the few read back to notice the endpoint's return.
        await wait_until(lambda: first.stats.spooled >= 25 and not writer_busy(first))
        during = first.stats
        assert_adds_up(during)
        assert during.queued + during.in_flight == 30 - during.spooled
    closed = await first.aclose()  # still down: everything is kept for the next start
    after = first.stats
    assert (closed.dropped, closed.spooled) == (0, 30)
    assert (after.enqueued, after.spooled, after.queued, after.in_flight) == (30, 30, 0, 0)
    assert_adds_up(after)

    up = Recorder()
    second = AsyncEncharge(WRITE_KEY, transport=httpx.MockTransport(up), **options)
    async with second:
        # Taken over at the opening: enqueued from the start, spooled until read back.
        resumed = second.stats
        assert resumed.enqueued == 30
        assert_adds_up(resumed)
        await second.track("After restart", user_id="p", properties={"n": 30})
        assert_adds_up(second.stats)
        assert (await second.flush(timeout=10)).complete  # what was resumed included
        done = second.stats
    assert (done.enqueued, done.delivered, done.spooled) == (31, 31, 0)
    assert_adds_up(done)
    assert order_by_person(up.bodies)["p"] == list(range(31))
