"""SIGTERM (docker stop, systemd, Kubernetes) drains the sync client of a plain script.

Python's default SIGTERM ends the process without exit handlers; the sync client installs
a handler when nobody else did, delivers what is queued, then ends the process the way
SIGTERM would. Real processes, a real emulator with latency, no logging configured.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from encharge_async.emulator import Emulator

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX")]

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import signal, sys, time
from encharge_async import Encharge

mode = sys.argv[2]
if mode == "own-handler":
    signal.signal(signal.SIGTERM, lambda *args: sys.exit(7))
encharge = Encharge("k", endpoint=sys.argv[1], handle_sigterm=mode != "opt-out",
                    max_concurrency=4, shutdown_timeout=20)
for i in range(200):
    encharge.track("Queued", user_id=str(i))
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def run_and_terminate(mode: str) -> tuple[int, str, int]:
    """Run the script against an emulator (20 ms per request, 4 in flight: 200 events take
    about a second, so most are queued when SIGTERM comes); return its exit status, its
    stderr and how many events arrived."""
    async with Emulator(write_key="k", latency=0.02) as emulator:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            textwrap.dedent(SCRIPT),
            f"http://127.0.0.1:{emulator.port}/v1/",
            mode,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        try:
            assert process.stdout is not None
            assert await asyncio.wait_for(process.stdout.readline(), 30) == b"ready\n"
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode is not None
        return process.returncode, stderr.decode(), len(emulator.events)


@pytest.mark.anyio
async def test_sigterm_delivers_what_is_queued_and_keeps_the_exit_status() -> None:
    status, stderr, arrived = await run_and_terminate("default")
    assert status == -signal.SIGTERM, stderr
    assert arrived == 200
    assert "Traceback" not in stderr


@pytest.mark.anyio
async def test_opting_out_leaves_sigterm_as_python_has_it() -> None:
    status, _, arrived = await run_and_terminate("opt-out")
    assert status == -signal.SIGTERM
    assert arrived < 200  # what was queued died with the process


@pytest.mark.anyio
async def test_an_existing_handler_is_left_alone() -> None:
    """The app's own handler runs (sys.exit(7)); exiting normally runs the exit handler,
    which delivers."""
    status, stderr, arrived = await run_and_terminate("own-handler")
    assert status == 7, stderr
    assert arrived == 200
