"""run_emulator: the blocking command-line entry point, stopped by a signal."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from encharge_async.emulator import Faults, run_emulator

ROOT = Path(__file__).resolve().parents[2]
SECRET = "secret-write-key"
EVENT = {"name": "Paid", "user": {"email": "a@b.c"}}
URL = re.compile(r"(http://\S+/v1/)")


class _Log(io.StringIO):
    """A log that tells when the first line was written."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = threading.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        if "\n" in text:
            self.ready.set()
        return written


def _signals() -> dict[int, Any]:
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


@pytest.mark.slow
def test_run_emulator_serves_until_sigint_then_restores_signals():
    handlers = _signals()
    log = _Log()
    seen: dict[str, Any] = {}

    def drive() -> None:
        if not log.ready.wait(10):
            return
        try:
            url = URL.search(log.getvalue())
            assert url is not None
            with httpx.Client(timeout=5) as client:
                headers = {"X-Encharge-Token": SECRET}
                seen["status"] = client.post(url[1], json=EVENT, headers=headers).status_code
                base = url[1].removesuffix("/v1/")
                seen["stats"] = client.get(f"{base}/_emulator/stats").json()
        except Exception as exc:  # reported by the test below
            seen["error"] = exc
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    driver = threading.Thread(target=drive)
    driver.start()
    try:
        run_emulator("127.0.0.1", 0, SECRET, faults=Faults(latency=0.001), seed=3, log=log)
    finally:
        driver.join(10)
    assert "error" not in seen, seen.get("error")
    assert seen["status"] == 200
    assert seen["stats"]["accepted"] == 1
    assert seen["stats"]["faults"]["latency"] == 1
    [line] = log.getvalue().splitlines()
    assert URL.search(line)
    assert SECRET not in line
    assert _signals() == handlers


def test_run_emulator_needs_the_main_thread():
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_emulator("127.0.0.1", 0, [SECRET])
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert len(errors) == 1
    assert "main thread" in str(errors[0])


def test_run_emulator_refuses_no_write_key():
    with pytest.raises(ValueError, match="write key"):
        run_emulator("127.0.0.1", 0, [])


@pytest.mark.slow
@pytest.mark.asyncio
async def test_run_emulator_in_a_process_stops_on_sigterm():
    code = (
        "from encharge_async.emulator import run_emulator; "
        f"run_emulator('127.0.0.1', 0, [{SECRET!r}])"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        url = URL.search(line)
        assert url is not None, line
        assert SECRET not in line
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.post(url[1], json=EVENT, headers={"X-Encharge-Token": SECRET})
            assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        assert await process.stdout.read() == b""  # only the one line
        assert SECRET.encode() not in await process.stderr.read()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
