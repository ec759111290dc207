"""Nothing lost silently where apps really run: plain scripts and servers with no logging
configured, clients never closed, a wrong write key. Real processes against the emulator;
what the user would see is read from stderr."""

from __future__ import annotations

import asyncio
import gc
import sys
import textwrap
from pathlib import Path

import pytest

from encharge_async import AsyncEncharge
from encharge_async.emulator import Emulator

from .conftest import ENDPOINT, WRITE_KEY

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def run_script(script: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


NEVER_CLOSED = """
import asyncio, sys
from encharge_async import AsyncEncharge

async def main() -> None:
    client = AsyncEncharge("k", endpoint=sys.argv[1], shutdown_timeout=float(sys.argv[2]),
                           on_drop=lambda event, reason: print("dropped", reason.value))
    for i in range(5):
        await client.track("E", user_id=str(i))
    # no async with, no aclose()

asyncio.run(main())
"""


@pytest.mark.slow
async def test_a_never_closed_client_delivers_on_the_way_out_and_says_so() -> None:
    async with Emulator(write_key="k", latency=0.05) as emulator:
        code, stdout, stderr = await run_script(NEVER_CLOSED, emulator.url, "10")
        assert code == 0, stderr
        assert len(emulator.events) == 5
    assert "was never closed" in stderr
    assert "dropped" not in stdout


@pytest.mark.slow
async def test_a_never_closed_client_that_cannot_deliver_in_time_reports_the_drops() -> None:
    async with Emulator(write_key="k", latency=5) as emulator:
        code, stdout, stderr = await run_script(NEVER_CLOSED, emulator.url, "0.2")
    assert code == 0, stderr
    assert stdout.splitlines() == ["dropped not_closed"] * 5
    assert "5 event(s) dropped: the client was never closed" in stderr


WRONG_KEY = """
import asyncio, sys
from encharge_async import AsyncEncharge

async def main() -> None:
    async with AsyncEncharge("wrong-key", endpoint=sys.argv[1], max_retries=1) as client:
        for i in range(20):
            await client.track("E", user_id=str(i))

asyncio.run(main())
"""


@pytest.mark.slow
async def test_a_wrong_write_key_is_one_error_on_stderr_with_no_logging_configured() -> None:
    async with Emulator(write_key="k") as emulator:
        code, _, stderr = await run_script(WRONG_KEY, emulator.url)
    assert code == 0
    lines = stderr.splitlines()
    refused = [line for line in lines if "refused the write key" in line]
    assert len(refused) == 1, stderr  # once, not per event
    assert "Ingest API *write* key" in refused[0]
    assert "wrong-key" not in stderr  # the key itself is never shown
    # The failures are counted, in a few lines at most (not one per event).
    assert 1 <= len([line for line in lines if "failed for good" in line]) <= 2


FULL_QUEUE = """
import asyncio, sys
from encharge_async import AsyncEncharge

async def main() -> None:
    async with AsyncEncharge("k", endpoint=sys.argv[1], max_queue_size=5) as client:
        for i in range(100):
            client.track_nowait("E", user_id=str(i))

asyncio.run(main())
"""


@pytest.mark.slow
async def test_drops_at_a_full_queue_are_counted_on_stderr() -> None:
    async with Emulator(write_key="k") as emulator:
        code, _, stderr = await run_script(FULL_QUEUE, emulator.url)
    assert code == 0
    counts = [
        int(line.split("dropped ")[1].split(" ")[0])
        for line in stderr.splitlines()
        if line.startswith("dropped ")
    ]
    assert sum(counts) == 95  # every drop reported, in two lines rather than 95
    assert len(counts) <= 2


@pytest.mark.slow
async def test_a_client_collected_while_open_warns() -> None:
    def start_and_abandon() -> None:
        async def main() -> None:
            client = AsyncEncharge(WRITE_KEY, endpoint=ENDPOINT, shutdown_timeout=0)
            await client.track("E", user_id="1")  # and the client is never closed

        asyncio.run(main())

    with pytest.warns(ResourceWarning, match="unclosed <AsyncEncharge"):  # noqa: PT031
        await asyncio.to_thread(start_and_abandon)
        gc.collect()
