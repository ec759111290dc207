"""The example apps under real servers, in subprocesses, against an emulator.

Each test starts the emulator, serves an example app on a free loopback port (uvicorn,
aiohttp, gunicorn with --preload and 2 workers), sends it requests, stops it with SIGTERM
and checks that every event the app tracked reached the emulator: nothing is lost when
the server shuts down, although the emulator's latency keeps events in flight until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from encharge_async.emulator import Emulator

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
KEY = "k-servers"
LATENCY = 0.3  # seconds the emulator takes per event: events are in flight at SIGTERM
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals"),
]


class Server:
    """A server in a subprocess (its own process group): its output and its base URL."""

    def __init__(self, process: asyncio.subprocess.Process, url_pattern: str) -> None:
        self.process = process
        self.output: list[str] = []
        self.url = ""
        self._pattern = re.compile(url_pattern)
        self._started = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            match = self._pattern.search(line)
            if match and not self.url:
                self.url = match[1]
                self._started.set()

    async def started(self) -> None:
        """Wait until the server printed its URL; fail if it exited or took too long."""
        started = asyncio.ensure_future(self._started.wait())
        await asyncio.wait(
            {started, self._reader}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        started.cancel()
        assert self.url, f"the server did not start:\n{self.log()}"

    async def terminate(self) -> int:
        """SIGTERM, as a process manager stops a server; return its exit status."""
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        await asyncio.wait_for(self._reader, STOP_TIMEOUT)
        return code

    def log(self) -> str:
        return "\n".join(self.output[-50:])

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def serve(
    args: list[str], emulator: Emulator, url_pattern: str, tmp_path: Path
) -> AsyncIterator[Server]:
    """Start a server configured for `emulator`; kill it (and its workers) on the way out."""
    env = {
        **os.environ,
        "ENCHARGE_WRITE_KEY": KEY,
        "ENCHARGE_INGEST_URL": emulator.url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "XDG_RUNTIME_DIR": str(tmp_path),  # where gunicorn puts its control socket
    }
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=EXAMPLES,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group: kill() reaches the workers too
    )
    server = Server(process, url_pattern)
    try:
        await server.started()
        yield server
    finally:
        await server.kill()


async def post_all(base_url: str, paths: list[str]) -> list[str]:
    """POST each path (concurrently); return the message ids the app answered."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        responses = await asyncio.gather(*(http.post(path) for path in paths))
    for response in responses:
        assert response.status_code == 200, response.text
    return [response.json()["message_id"] for response in responses]


def signup_paths(count: int) -> list[str]:
    return [f"/signup?email=user{i}@example.com&plan=Pro" for i in range(count)]


def assert_all_arrived(emulator: Emulator, ids: list[str], server: Server) -> None:
    arrived = [e.idempotency_key for e in emulator.events]
    missing = set(ids) - set(arrived)
    assert not missing, f"{len(missing)} event(s) lost at shutdown:\n{server.log()}"
    assert not emulator.rejected


@pytest.mark.slow
async def test_fastapi_app_under_uvicorn(tmp_path: Path) -> None:
    async with Emulator(write_key=KEY, latency=LATENCY) as emulator:
        args = [sys.executable, "-m", "uvicorn", "fastapi_app:app"]
        args += ["--host", "127.0.0.1", "--port", "0"]
        async with serve(args, emulator, r"Uvicorn running on (http://\S+)", tmp_path) as server:
            ids = await post_all(server.url, signup_paths(20))
            upgrades = await post_all(
                server.url, [f"/users/{i}/upgrade?plan=Pro" for i in range(5)]
            )
            # uvicorn re-raises the signal once it has shut down gracefully.
            assert await server.terminate() in (0, -signal.SIGTERM), server.log()
        assert_all_arrived(emulator, ids + upgrades, server)
        assert len(emulator.events) == 20 + 2 * 5  # each upgrade also identifies
        for i in range(5):  # in order: identify, then the event
            person = emulator.person(user_id=str(i))
            assert person is not None
            assert person.fields == {"plan": "Pro"}
            assert person.events == ("Upgraded",)
        assert "Application shutdown complete" in server.log()


@pytest.mark.slow
async def test_aiohttp_app_under_aiohttp_web(tmp_path: Path) -> None:
    async with Emulator(write_key=KEY, latency=LATENCY) as emulator:
        args = [sys.executable, "-m", "aiohttp.web", "-H", "127.0.0.1", "-P", "0"]
        args += ["aiohttp_app:init_app"]
        async with serve(args, emulator, r"Running on (http://\S+) ", tmp_path) as server:
            ids = await post_all(server.url, signup_paths(20))
            assert await server.terminate() == 0, server.log()
        assert_all_arrived(emulator, ids, server)
        assert len(emulator.events) == 20


@pytest.mark.slow
async def test_flask_app_under_gunicorn_preload_with_two_workers(tmp_path: Path) -> None:
    async with Emulator(write_key=KEY, latency=LATENCY) as emulator:
        args = [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2"]
        args += ["--bind", "127.0.0.1:0", "--graceful-timeout", "20", "flask_app:app"]
        async with serve(args, emulator, r"Listening at: (http://\S+)", tmp_path) as server:
            ids = await post_all(server.url, signup_paths(20))
            upgrades = await post_all(
                server.url, [f"/users/{i}/upgrade?plan=Pro" for i in range(5)]
            )
            assert await server.terminate() == 0, server.log()
        assert_all_arrived(emulator, ids + upgrades, server)
        assert len(emulator.events) == 20 + 2 * 5
        for i in range(5):
            person = emulator.person(user_id=str(i))
            assert person is not None
            assert person.events == ("Upgraded",)
        booted = [line for line in server.output if "Booting worker" in line]
        assert len(booted) == 2, server.log()


@pytest.mark.slow
async def test_a_wrong_key_is_visible_under_uvicorns_default_logging(tmp_path: Path) -> None:
    """uvicorn configures only its own loggers: the library's ERROR about a refused write
    key still reaches the server's output, once, however many events fail."""
    async with Emulator(write_key="another-key") as emulator:  # refuses KEY: 401
        args = [sys.executable, "-m", "uvicorn", "fastapi_app:app"]
        args += ["--host", "127.0.0.1", "--port", "0"]
        async with serve(args, emulator, r"Uvicorn running on (http://\S+)", tmp_path) as server:
            await post_all(server.url, signup_paths(5))
            # uvicorn re-raises the signal once it has shut down gracefully.
            assert await server.terminate() in (0, -signal.SIGTERM), server.log()
        refused = [line for line in server.output if "refused the write key" in line]
        assert len(refused) == 1, server.log()
        assert KEY not in "\n".join(server.output)  # the key itself is never shown
