"""Shutdown under load: SIGTERM to a uvicorn-served FastAPI app in the middle of a stream.

The app (the FastAPI example's shape: `encharge_lifespan`, one `track()` per request) runs
in a child process; this test sends it a steady stream of requests from several
connections, sends SIGTERM mid-stream and keeps sending until the server stops answering.
The emulator (served by this test) has latency, so events are queued and in flight at
SIGTERM.

- Without a spool: every event of a request answered 2xx reaches the emulator before the
  process exits, and the client's close reports nothing dropped or failed, i.e. it drained
  within its shutdown_timeout.
- With a spool and a shutdown_timeout far too short to drain: every such event has either
  reached the emulator or is in the spool file when the process has exited, and a next
  start on the same spool delivers it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
import tenacity
from anyio.streams.buffered import BufferedByteReceiveStream

from encharge_async import AsyncEncharge
from encharge_async._spool import Spool
from encharge_async.emulator import Emulator

from ..conftest import wait_drained
from .conftest import START_TIMEOUT, STOP_TIMEOUT, Stopwatch, child_env, summary

pytestmark = [
    pytest.mark.slow,  # soak, fault and crash tests: the full suite runs them
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),  # uvicorn and the emulator
    pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals"),
]

KEY = "wk-shutdown-0123456789"
SENDERS = 6  # concurrent connections sending requests
PAUSE = 0.01  # seconds between two requests of a sender
STREAM_BEFORE_SIGTERM = 0.6

APP = """
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI

from encharge_async import AsyncEncharge
from encharge_async.integrations.starlette import encharge_lifespan, get_encharge

if os.environ.get("RELIABILITY_SPOOL"):  # say when the spool has been read at start
    handler = logging.StreamHandler(sys.stdout)
    logging.getLogger("encharge_async").addHandler(handler)
    logging.getLogger("encharge_async").setLevel(logging.INFO)


def make_client() -> AsyncEncharge:  # the write key and the URL come from the environment
    return AsyncEncharge(
        spool=os.environ.get("RELIABILITY_SPOOL") or None,
        shutdown_timeout=float(os.environ["RELIABILITY_SHUTDOWN_TIMEOUT"]),
    )


opened = encharge_lifespan(client=make_client)


@asynccontextmanager
async def lifespan(app: FastAPI):
    async with opened(app):
        yield
    result = await app.state.encharge.aclose()  # closed already: the same result again
    print("ENCHARGE-CLOSED " + json.dumps(dataclasses.asdict(result)), flush=True)


app = FastAPI(lifespan=lifespan)
EnchargeDep = Annotated[AsyncEncharge, Depends(get_encharge)]


@app.post("/signup")
async def signup(email: str, n: int, encharge: EnchargeDep) -> dict[str, str]:
    message_id = await encharge.track("Registered user", email=email, properties={"n": n})
    return {"message_id": message_id}
"""


class App:
    """The app's process and what it printed."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.output: list[str] = []
        self.url = ""
        self.closed: dict[str, Any] | None = None
        self.started = anyio.Event()
        self.drained = anyio.Event()

    async def read(self) -> None:
        assert self.process.stdout is not None
        lines = BufferedByteReceiveStream(self.process.stdout)
        while True:
            try:
                line = (await lines.receive_until(b"\n", 1_000_000)).decode(errors="replace")
            except (anyio.EndOfStream, anyio.IncompleteRead):
                self.started.set()  # it exited: let start() fail with the log
                return
            self.output.append(line)
            if match := re.search(r"Uvicorn running on (http://\S+)", line):
                self.url = match[1]
                self.started.set()
            if "is drained" in line:
                self.drained.set()
            if line.startswith("ENCHARGE-CLOSED "):
                self.closed = json.loads(line.removeprefix("ENCHARGE-CLOSED "))

    def log(self) -> str:
        return "\n".join(self.output[-60:])


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, emulator: Emulator, **env: str) -> AsyncIterator[App]:
    """Run the app under uvicorn; kill its process group on the way out."""
    (tmp_path / "reliability_app.py").write_text(APP)
    args = [sys.executable, "-m", "uvicorn", "reliability_app:app", "--app-dir", str(tmp_path)]
    args += ["--host", "127.0.0.1", "--port", "0", "--no-access-log"]
    args += ["--timeout-graceful-shutdown", "10"]
    process = await anyio.open_process(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=child_env(ENCHARGE_WRITE_KEY=KEY, ENCHARGE_INGEST_URL=emulator.url, **env),
        start_new_session=True,
    )
    app = App(process)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(app.read)
            with anyio.fail_after(START_TIMEOUT):
                await app.started.wait()
            assert app.url, f"the app did not start:\n{app.log()}"
            yield app
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            with anyio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            await process.aclose()


class Load:
    """A steady stream of signups from SENDERS connections, until the server is gone."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.tracked: dict[str, int] = {}  # message id -> n, for each 2xx answer
        self.refused_before_sigterm: list[str] = []
        self.answers_after_sigterm = 0
        self.sigterm_sent = False

    async def sender(self, k: int) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
            j = 0
            while True:
                n = k * 1_000_000 + j
                try:
                    response = await http.post(
                        "/signup", params={"email": f"u{k}-{j}@example.com", "n": n}
                    )
                except httpx.TransportError as exc:
                    if not self.sigterm_sent:
                        self.refused_before_sigterm.append(repr(exc))
                    return  # the server is gone
                if response.is_success:
                    self.tracked[response.json()["message_id"]] = n
                    self.answers_after_sigterm += self.sigterm_sent
                elif not self.sigterm_sent:
                    self.refused_before_sigterm.append(f"{response.status_code} {response.text}")
                j += 1
                await anyio.sleep(PAUSE)  # the load's pace, on purpose


async def run_load_and_sigterm(app: App) -> tuple[Load, float]:
    """Stream requests, SIGTERM mid-stream, wait for the exit; return the load and the
    seconds from SIGTERM to exit."""
    load = Load(app.url)
    with anyio.fail_after(STREAM_BEFORE_SIGTERM + STOP_TIMEOUT):
        async with anyio.create_task_group() as tg:
            for k in range(SENDERS):
                tg.start_soon(load.sender, k)
            await anyio.sleep(STREAM_BEFORE_SIGTERM)  # a measured window of load, on purpose
            load.sigterm_sent = True
            sent_at = time.monotonic()
            app.process.send_signal(signal.SIGTERM)
            await app.process.wait()
            exit_seconds = time.monotonic() - sent_at
    return load, exit_seconds


async def test_sigterm_mid_stream_delivers_every_acknowledged_event(tmp_path: Path) -> None:
    clock = Stopwatch()
    shutdown_timeout = 10.0
    async with Emulator(write_key=KEY, latency=(0.05, 0.15)) as emulator:
        async with serve(
            tmp_path, emulator, RELIABILITY_SHUTDOWN_TIMEOUT=str(shutdown_timeout)
        ) as app:
            load, exit_seconds = await run_load_and_sigterm(app)
        arrived = {record.idempotency_key for record in emulator.events}
        rejected = emulator.rejected

    assert app.process.returncode in (0, -signal.SIGTERM), app.log()
    assert not load.refused_before_sigterm, load.refused_before_sigterm[:3]
    assert "Application shutdown complete" in app.log()
    assert app.closed is not None, app.log()
    lost = set(load.tracked) - arrived
    assert not lost, f"{len(lost)} acknowledged event(s) not delivered before exit"
    assert not rejected
    # Drained within shutdown_timeout: the client had to drop (or give up on) nothing.
    assert (app.closed["dropped"], app.closed["failed"]) == (0, 0)
    # The stream was really mid-flight: events were still queued when SIGTERM came.
    assert app.closed["delivered"] > 0
    summary(
        "shutdown under load, no spool",
        requests_2xx=len(load.tracked),
        answered_after_sigterm=load.answers_after_sigterm,
        delivered_during_shutdown=app.closed["delivered"],
        delivered_before_exit=len(set(load.tracked) & arrived),
        dropped=app.closed["dropped"],
        lost=len(lost),
        shutdown_timeout_s=shutdown_timeout,
        sigterm_to_exit_s=round(exit_seconds, 2),
        seconds=clock.elapsed,
    )


async def test_sigterm_with_a_spool_keeps_what_it_cannot_drain(tmp_path: Path) -> None:
    clock = Stopwatch()
    shutdown_timeout = 0.5
    path = tmp_path / "app.spool"
    # Slow enough that most events are still queued when the shutdown deadline passes.
    async with Emulator(write_key=KEY, latency=0.4) as emulator:
        async with serve(
            tmp_path,
            emulator,
            RELIABILITY_SHUTDOWN_TIMEOUT=str(shutdown_timeout),
            RELIABILITY_SPOOL=str(path),
        ) as app:
            # Events sent while the spool is read at start may be stranded (see
            # test_crash.py::test_an_event_spilled_at_start_is_not_stranded).
            with anyio.fail_after(START_TIMEOUT):
                await app.drained.wait()
            load, exit_seconds = await run_load_and_sigterm(app)
        before_exit = {record.idempotency_key for record in emulator.events}

        # The process has exited: what it did not deliver must be in the spool file.
        async with await Spool.open(path) as spool:
            in_spool = {event.message_id for event in await spool.load(limit=1_000_000)}
        missing = set(load.tracked) - before_exit - in_spool
        assert not missing, f"{len(missing)} acknowledged event(s) neither sent nor spooled"

        # The next start delivers them.
        emulator.faults.clear()
        async with AsyncEncharge(
            KEY, endpoint=emulator.url, spool=path, retry_wait=tenacity.wait_none()
        ) as again:
            await wait_drained(again, timeout=30)
        arrived = [record.idempotency_key for record in emulator.events]

    assert app.process.returncode in (0, -signal.SIGTERM), app.log()
    assert not load.refused_before_sigterm, load.refused_before_sigterm[:3]
    assert app.closed is not None, app.log()
    assert app.closed["spooled"] > 0  # the deadline really passed with events left
    assert app.closed["failed"] == 0
    lost = set(load.tracked) - set(arrived)
    assert not lost
    # Per person (one email per request here), nothing to order; each event is the one
    # the request tracked.
    numbers = {record.idempotency_key: record.body["properties"]["n"] for record in emulator.events}
    assert all(numbers[mid] == n for mid, n in load.tracked.items())
    summary(
        "shutdown under load, spool",
        requests_2xx=len(load.tracked),
        answered_after_sigterm=load.answers_after_sigterm,
        delivered_before_exit=len(set(load.tracked) & before_exit),
        spooled_at_exit=app.closed["spooled"],
        dropped_reported=app.closed["dropped"],
        delivered_by_next_start=len(set(load.tracked) - before_exit),
        duplicates=len(arrived) - len(set(arrived)),
        lost=len(lost),
        shutdown_timeout_s=shutdown_timeout,
        sigterm_to_exit_s=round(exit_seconds, 2),
        seconds=clock.elapsed,
    )
