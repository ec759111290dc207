"""The client on uvloop (what `uvicorn[standard]` runs apps on), against the emulator.

uvloop's loop is not an `asyncio.BaseEventLoop`: the hot path's "on the client's loop"
test, the default transport and the hand-over from threads take their generic forms.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import anyio
import pytest
import tenacity

from encharge_async import AsyncEncharge, DropReason
from encharge_async.emulator import Emulator

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="uvloop does not run on Windows"),
]

KEY = "k-uvloop"


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    pytest.importorskip("uvloop")
    return ("asyncio", {"use_uvloop": True})


async def test_runs_on_uvloop() -> None:
    import asyncio

    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


@pytest.mark.slow
async def test_delivery_order_faults_and_threads_on_uvloop() -> None:
    drops: list[DropReason] = []
    async with Emulator(write_key=KEY, seed=3) as emulator:
        emulator.faults.error_rate = 0.2
        emulator.faults.drop_rate = 0.1
        emulator.faults.drop_mode = "after"
        async with AsyncEncharge(
            KEY,
            endpoint=emulator.url,
            max_concurrency=8,
            retry_wait=tenacity.wait_fixed(0.01),
            on_drop=lambda e, r: drops.append(r),
        ) as client:
            from encharge_async._http11 import Http11Transport

            for i in range(200):
                await client.track("step", user_id=f"p{i % 10}", properties={"i": i})
            thread = threading.Thread(
                target=lambda: [client.track_nowait("thread", user_id="t") for _ in range(20)]
            )
            thread.start()
            await anyio.to_thread.run_sync(thread.join, 5)
            result = await client.flush(timeout=30)
            # White-box: which transport the workers chose is not public.
            assert {type(t) for t in client._pipeline.dispatcher.transports} == {Http11Transport}
        accepted = [e for e in emulator.events if not e.duplicate]
        faults = emulator.fault_counts
    assert faults.get("drop_after", 0) > 0  # connections really were cut, and retried
    # Some may be delivered before flush() starts (the loop runs while the thread joins):
    # the client's counters, not the flush result, cover all of them.
    assert result.complete
    stats = client.stats
    assert (stats.delivered, stats.failed, stats.dropped, drops) == (220, 0, 0, [])
    assert len(accepted) == 220
    for person in range(10):
        steps = [
            e.body["properties"]["i"] for e in accepted if e.body["user"]["userId"] == f"p{person}"
        ]
        assert steps == sorted(steps), f"p{person} out of order"
