"""Event loops, threads and fork."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import threading
import warnings

import anyio
import httpx
import pytest

from encharge_async import (
    AsyncEncharge,
    ClientClosedError,
    DropReason,
    EventLoopError,
    QueueFullError,
)
from encharge_async.testing import EnchargeRecorder

from .conftest import ENDPOINT, WRITE_KEY, ClientFactory, Recorder, wait_until


def test_nowait_without_a_loop_before_start_is_a_clear_error() -> None:
    client = AsyncEncharge(WRITE_KEY)
    with pytest.raises(EventLoopError, match="no running event loop"):
        client.track_nowait("E", user_id=1)
    assert client.stats.enqueued == 0


def test_one_client_two_event_loops() -> None:
    recorder = Recorder()
    client = AsyncEncharge(WRITE_KEY, endpoint=ENDPOINT, transport=httpx.MockTransport(recorder))

    async def first() -> None:
        await client.track("E", user_id=1)
        await client.flush(timeout=5)

    async def second() -> None:
        with pytest.raises(EventLoopError, match="runs on another event loop"):
            await client.track("E", user_id=2)
        with pytest.raises(EventLoopError, match="runs on another event loop"):
            client.track_nowait("E", user_id=2)
        with pytest.raises(EventLoopError):
            await client.flush()
        # Its loop has ended: closing it only marks it closed, from any loop.
        assert (await client.aclose()).complete
        with pytest.raises(ClientClosedError):
            client.track_nowait("E", user_id=3)

    asyncio.run(first())
    asyncio.run(second())
    assert len(recorder.requests) == 1


@pytest.mark.slow
@pytest.mark.anyio
async def test_nowait_from_a_worker_thread(make_client: ClientFactory, recorder: Recorder) -> None:
    async with make_client() as client:
        await client.track("from loop", user_id=1)
        mids = await anyio.to_thread.run_sync(
            lambda: [client.track_nowait("from thread", user_id=i) for i in range(5)]
        )
        await wait_until(lambda: client.stats.enqueued == 6)  # the hand-offs were taken
        await client.flush(timeout=5)
    assert len(mids) == 5
    sent = {r.headers["idempotency-key"] for r in recorder.requests}
    assert set(mids) <= sent
    assert client.stats.delivered == 6


@pytest.mark.anyio
async def test_handed_over_events_not_yet_taken_at_close_are_counted(
    make_client: ClientFactory,
) -> None:
    drops: list[DropReason] = []
    async with make_client(on_drop=lambda e, r: drops.append(r)) as client:
        await client.track("first", user_id=1)
        assert client._pipeline.binding is not None
        # White-box: the loop never gets to run the take, as when it is closing.
        client._pipeline.binding._threadsafe = lambda *args: None
        await anyio.to_thread.run_sync(lambda: client.track_nowait("late", user_id=2))
    assert (client.stats.delivered, client.stats.dropped) == (1, 1)
    assert drops == [DropReason.SHUTDOWN]


@pytest.mark.anyio
async def test_bursts_from_many_threads_are_handed_over_whole_and_in_order(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    """Threads hand events over in batches (one wake-up of the loop per batch): nothing is
    lost or reordered, and each call's returned id is the one sent."""

    def burst(thread: int) -> list[str]:
        return [
            client.track_nowait("E", user_id=f"t{thread}", properties={"i": i}) for i in range(200)
        ]

    async with make_client(max_concurrency=8) as client:
        results: list[list[str]] = []
        async with anyio.create_task_group() as tg:
            for thread in range(4):

                async def run(thread: int = thread) -> None:
                    results.append(await anyio.to_thread.run_sync(burst, thread))

                tg.start_soon(run)
        await client.flush(timeout=10)
    bodies = [json.loads(r.content) for r in recorder.requests]
    assert len(bodies) == 800 == client.stats.delivered
    for thread in range(4):
        steps = [b["properties"]["i"] for b in bodies if b["user"]["userId"] == f"t{thread}"]
        assert steps == list(range(200))
    sent = sorted(r.headers["idempotency-key"] for r in recorder.requests)
    assert sent == sorted(mid for ids in results for mid in ids)


@pytest.mark.anyio
async def test_thread_calls_on_a_full_queue(make_client: ClientFactory) -> None:
    held = EnchargeRecorder()
    held.hold()
    async with make_client(transport=held, max_concurrency=1, max_queue_size=1) as client:
        await client.track("flying", user_id=1)
        await held.wait_for_requests(1)
        await client.track("queued", user_id=2)
        await anyio.to_thread.run_sync(lambda: client.track_nowait("dropped", user_id=3))
        await wait_until(lambda: client.stats.dropped == 1)
        held.release()

    held = EnchargeRecorder()
    held.hold()
    async with make_client(
        transport=held, max_concurrency=1, max_queue_size=1, overflow="block"
    ) as client:
        await client.track("flying", user_id=1)
        await held.wait_for_requests(1)
        await client.track("queued", user_id=2)
        with pytest.raises(QueueFullError, match="another thread"):
            await anyio.to_thread.run_sync(lambda: client.track_nowait("E", user_id=3))
        held.release()

    held = EnchargeRecorder()
    held.hold()
    async with make_client(
        transport=held, max_concurrency=1, max_queue_size=1, overflow="drop_oldest"
    ) as client:
        await client.track("flying", user_id=1)
        await held.wait_for_requests(1)
        await client.track("evicted", user_id=2)
        await anyio.to_thread.run_sync(lambda: client.track_nowait("kept", user_id=3))
        await wait_until(lambda: client.stats.dropped == 1)
        held.release()
    assert client.stats.delivered == 2


@pytest.mark.anyio
async def test_thread_call_racing_shutdown_is_counted(make_client: ClientFactory) -> None:
    drops: list[DropReason] = []
    client = make_client(on_drop=lambda event, reason: drops.append(reason))
    await client.track("E", user_id=1)
    # The thread hands its event over while the client is open, but the loop only runs the
    # hand-off after aclose() began (join() blocks the loop meanwhile): it must be counted as
    # dropped, not silently lost.
    thread = threading.Thread(target=lambda: client.track_nowait("late", user_id=2))
    thread.start()
    thread.join(5)
    await client.aclose()
    stats = client.stats
    assert (stats.delivered, stats.dropped) == (1, 1)
    assert drops == [DropReason.SHUTDOWN]
    with pytest.raises(ClientClosedError):
        await anyio.to_thread.run_sync(lambda: client.track_nowait("E", user_id=3))


# The loop is closed under an open client on purpose: its worker tasks die unawaited.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_thread_call_after_the_loop_stopped() -> None:
    client = AsyncEncharge(WRITE_KEY, endpoint=ENDPOINT, transport=httpx.MockTransport(Recorder()))

    async def start(client: AsyncEncharge) -> None:
        await client.track("E", user_id=1)

    asyncio.run(start(client))  # the loop closes with the client still open
    with pytest.raises(EventLoopError, match="has stopped"):
        client.track_nowait("E", user_id=2)
    del client
    gc.collect()  # report the abandoned tasks here, under this test's filters


# The loop is closed under an open client, its tasks never cancelled: they die unawaited.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_same_thread_call_after_the_loop_was_closed_without_cancelling() -> None:
    """The hot path's cheap "on our loop" test must still see that the loop is gone."""
    client = AsyncEncharge(WRITE_KEY, endpoint=ENDPOINT, transport=httpx.MockTransport(Recorder()))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(client.track("E", user_id=1))
    loop.close()  # no asyncio.run(): the runner is never cancelled, its `finally` never runs
    with pytest.raises(EventLoopError, match="has stopped"):
        client.track_nowait("E", user_id=2)
    del client
    gc.collect()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_clean() -> None:
    recorder = Recorder()
    client = AsyncEncharge(WRITE_KEY, endpoint=ENDPOINT, transport=httpx.MockTransport(recorder))
    default_client = AsyncEncharge(WRITE_KEY, endpoint="http://127.0.0.1:9/v1/")
    read_end, write_end = os.pipe()

    async def parent_side() -> None:
        await client.track("parent", user_id=1)
        await client.flush(timeout=5)
        release = asyncio.Event()

        async def held(request: httpx.Request) -> httpx.Response:
            await release.wait()
            return httpx.Response(200)

        recorder.respond = held
        await client.track("pending in parent", user_id=2)
        await wait_until(lambda: len(recorder.requests) == 2)  # in flight at the fork
        await default_client.__aenter__()  # starts workers with their own transports
        # White-box: no public API says the workers have made their transports, which the
        # child must not inherit.
        await wait_until(lambda: bool(default_client._pipeline.dispatcher.transports))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # multi-threaded fork warning
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                report = child_side()
                os.write(write_end, json.dumps(report).encode())
                code = 0
            finally:
                os._exit(code)
        release.set()
        await client.aclose()
        await default_client.aclose()
        _, status = await anyio.to_thread.run_sync(os.waitpid, pid, 0)
        assert os.WEXITSTATUS(status) == 0

    def child_side() -> dict[str, object]:  # pragma: no cover - runs in the child
        before = client.stats
        recorder.requests.clear()
        recorder.respond = None

        async def child_main() -> dict[str, object]:
            await client.track("child", user_id=9, wait=True, timeout=5)
            await client.aclose()
            return {
                "stats_before": [before.enqueued, before.queued, before.in_flight],
                "default_transport_reset": default_client._pipeline.dispatcher.transports == (),
                "sent": [json.loads(r.content)["name"] for r in recorder.requests],
                "delivered": client.stats.delivered,
            }

        return asyncio.run(child_main())

    asyncio.run(parent_side())
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read() or b"{}")
    assert report == {
        "stats_before": [0, 0, 0],
        "default_transport_reset": True,
        "sent": ["child"],
        "delivered": 1,
    }
    assert client.stats.delivered == 2


@pytest.mark.anyio
async def test_trio_and_asyncio_share_one_code_path(
    make_client: ClientFactory, anyio_backend: str
) -> None:
    async with make_client() as client:
        await client.track("E", user_id=1, wait=True)
        # White-box: the loop binding the client chose is not public.
        assert client._pipeline.binding is not None
        assert client._pipeline.binding.backend == anyio_backend
    assert client.stats.delivered == 1
    assert sys.modules.get("encharge_async") is not None


@pytest.mark.anyio
async def test_nowait_from_a_thread_running_its_own_loop(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    async with make_client() as client:
        await client.track("from the client's loop", user_id=1)

        def other_thread() -> str:
            async def on_another_loop() -> str:
                # Waiting needs the client's own loop; a plain hand-off works from anywhere.
                with pytest.raises(EventLoopError):
                    await client.track("E", user_id=2, wait=True)
                await client.track("async, from another loop", user_id=3)
                return client.track_nowait("from another loop", user_id=2)

            return asyncio.run(on_another_loop())

        mid = await anyio.to_thread.run_sync(other_thread)
        await wait_until(lambda: client.stats.enqueued == 3)  # the hand-off was taken
        await client.flush(timeout=5)
    assert mid in {r.headers["idempotency-key"] for r in recorder.requests}
    assert client.stats.delivered == 3
