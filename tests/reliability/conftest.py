"""Shared helpers of the reliability tests: an emulator in a child process, summaries.

Each reliability test prints one summary line (run with `-s` to see them; docs/reliability.md
copies the figures of a real run). When `RELIABILITY_SUMMARY` names a file, the figures are
also appended to it as JSON lines.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import anyio.abc
import httpx
from anyio.streams.buffered import BufferedByteReceiveStream

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0  # a child process printing its URL
STOP_TIMEOUT = 15.0  # a child process exiting once asked to

# Serves an emulator until its stdin closes (so it also ends when the test process dies).
# argv[1]: JSON keyword arguments of Emulator, plus "flip_drop_mode_every" (seconds): the
# drop mode alternates between "before" and "after" at that pace, so both kinds happen.
EMULATOR_CHILD = r"""
import asyncio, json, os, sys
from encharge_async.emulator import Emulator

async def main():
    config = json.loads(sys.argv[1])
    flip = config.pop("flip_drop_mode_every", 0)
    async with Emulator(write_key=os.environ["RELIABILITY_WRITE_KEY"], **config) as emulator:
        print(emulator.url, flush=True)

        async def flipper():
            while True:
                await asyncio.sleep(flip)  # the fault schedule's pace, on purpose
                faults = emulator.faults
                faults.drop_mode = "after" if faults.drop_mode == "before" else "before"

        task = asyncio.ensure_future(flipper()) if flip else None
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
        if task is not None:
            task.cancel()

asyncio.run(main())
"""


def summary(test: str, **figures: Any) -> None:
    """Print the one-line summary of a test (and append it to $RELIABILITY_SUMMARY)."""
    text = ", ".join(f"{key}={value}" for key, value in figures.items())
    print(f"\n[reliability] {test}: {text}", flush=True)
    target = os.environ.get("RELIABILITY_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(json.dumps({"test": test, **figures}, default=str) + "\n")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child Python process: this checkout importable, unbuffered."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


class ChildEmulator:
    """An emulator served by a child process: its URL and its inspection endpoints."""

    def __init__(self, url: str, stderr_path: Path) -> None:
        self.url = url
        self.base_url = url.removesuffix("/v1/")
        self.stderr_path = stderr_path

    async def _get(self, view: str) -> Any:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.get(f"{self.base_url}/_emulator/{view}")
        response.raise_for_status()
        return response.json()

    async def stats(self) -> dict[str, Any]:
        """`{"accepted", "rejected", "duplicates", "faults": {kind: count}}`."""
        result: dict[str, Any] = await self._get("stats")
        return result

    async def _all(self, view: str) -> list[dict[str, Any]]:
        """Every item of a paginated view, following `next` page by page."""
        items: list[dict[str, Any]] = []
        query: str | None = f"{view}?limit=1000"
        while query is not None:
            page = await self._get(query)
            items += page["items"]
            query = page["next"] and page["next"].removeprefix("/_emulator/")
        return items

    async def events(self) -> list[dict[str, Any]]:
        """Accepted events, oldest first (`EventRecord.to_dict()`)."""
        return await self._all("events")

    async def rejected(self) -> list[dict[str, Any]]:
        """Requests not accepted, oldest first (`RejectedRecord.to_dict()`)."""
        return await self._all("rejected")


@asynccontextmanager
async def child_emulator(
    tmp_path: Path, write_key: str, **config: Any
) -> AsyncIterator[ChildEmulator]:
    """Serve an emulator (keyword arguments of `Emulator`) in a child process.

    The child is asked to stop (stdin closed) on the way out, and killed if it does not
    exit within STOP_TIMEOUT.
    """
    stderr_path = tmp_path / "emulator-child.stderr"
    with output_file(stderr_path) as stderr:
        process = await anyio.open_process(
            [sys.executable, "-c", EMULATOR_CHILD, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=child_env(RELIABILITY_WRITE_KEY=write_key),
        )
        try:
            assert process.stdout is not None
            try:
                with anyio.fail_after(START_TIMEOUT):
                    line = await BufferedByteReceiveStream(process.stdout).receive_until(
                        b"\n", 1000
                    )
            except (anyio.IncompleteRead, TimeoutError):
                raise AssertionError(
                    f"the emulator child did not start:\n{stderr_path.read_text()}"
                ) from None
            yield ChildEmulator(line.decode().strip(), stderr_path)
        finally:
            with anyio.CancelScope(shield=True):
                await stop_process(process)


async def stop_process(process: anyio.abc.Process) -> None:
    """Close the child's stdin, wait (bounded) for it to exit, else kill it; close streams."""
    if process.stdin is not None:
        await process.stdin.aclose()
    with anyio.move_on_after(STOP_TIMEOUT):
        await process.wait()
    if process.returncode is None:
        process.kill()
        with anyio.move_on_after(STOP_TIMEOUT):
            await process.wait()
    await process.aclose()


class LogCollector(logging.Handler):
    """Keeps every record of a logger (DEBUG and up) while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def collect_logs(name: str) -> Iterator[LogCollector]:
    """Collect the records of logger `name` at DEBUG, restoring its level afterwards."""
    logger = logging.getLogger(name)
    collector = LogCollector()
    level = logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.DEBUG)
    try:
        yield collector
    finally:
        logger.removeHandler(collector)
        logger.setLevel(level)


def output_file(path: Path) -> BinaryIO:
    """A file for a child process' output (a tiny local write, fine on the loop)."""
    return open(path, "wb")


class Stopwatch:
    """Wall-clock seconds since creation (for the summaries, never asserted)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return round(time.perf_counter() - self._start, 2)
