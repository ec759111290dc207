"""Secrets: the write key shows up nowhere, whatever fails; the spool is owner-only.

With every logger at DEBUG and every failure mode exercised over real sockets (401, 5xx,
429, connections cut before and after the event was recorded, timeouts, validation
errors, a full queue, shutdown drops, shutdown with a spool, a locked spool, bad
configuration), the write key appears in no log record (message, args, exc_info, extra
fields), no exception (str, repr, args, attributes, traceback, pickle), no repr, no stats,
and not in the spool's files (raw bytes of the database, its -wal, -shm and lock file, read
while the client runs and after it closed). Every spool file is created 0600, with the
process umask at 0 so the library cannot lean on it.
"""

from __future__ import annotations

import logging
import os
import pickle
import stat
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import tenacity

from encharge_async import (
    AsyncEncharge,
    ConfigurationError,
    DeliveryError,
    DropReason,
    Event,
    SpoolLockedError,
    ValidationError,
)
from encharge_async.emulator import Emulator

from ..conftest import wait_until
from .conftest import Stopwatch, summary

pytestmark = [
    pytest.mark.slow,  # soak, fault and crash tests: the full suite runs them
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
]

SECRET = f"wk_live_{uuid.uuid4().hex}"
MARKER = f"marker-{uuid.uuid4().hex}"
UNDELIVERED = DeliveryError  # in event bodies: proves the spool bytes were read


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


class Evidence:
    """Every text and byte string the key must not appear in."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.blobs: list[bytes] = []
        self.exceptions: list[BaseException] = []
        self.events: list[Event] = []

    def exception(self, exc: BaseException) -> None:
        self.exceptions.append(exc)
        self.texts += [str(exc), repr(exc), repr(exc.args), repr(vars(exc))]
        self.texts.append("".join(traceback.format_exception(exc)))
        try:
            self.blobs.append(pickle.dumps(exc))
        except Exception as error:  # unpicklable: its text is evidence too
            self.texts.append(repr(error))

    def call(self, function: Callable[[], object]) -> object:
        try:
            return function()
        except Exception as exc:
            self.exception(exc)
            return exc

    async def acall(self, function: Callable[[], Any]) -> object:
        try:
            return await function()
        except Exception as exc:
            self.exception(exc)
            return exc

    def objects(self, *objects: object) -> None:
        self.texts += [repr(o) for o in objects] + [str(o) for o in objects]

    def spool_files(self, path: Path) -> dict[str, int]:
        """Read the raw bytes of the spool's files; return their permission bits."""
        modes: dict[str, int] = {}
        for file in path.parent.iterdir():
            if file.name.startswith(path.name):
                modes[file.name] = stat.S_IMODE(file.stat().st_mode)
                self.blobs.append(file.read_bytes())
        return modes


async def test_the_write_key_leaks_nowhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Stopwatch()
    caplog.set_level(logging.DEBUG)  # every logger, httpx/httpcore included
    evidence = Evidence()
    path = tmp_path / "secret.spool"
    failures: list[DeliveryError] = []
    drops: list[tuple[Event, DropReason]] = []
    modes: dict[str, int] = {}

    def hooks() -> dict[str, Any]:
        return {
            "on_error": failures.append,
            "on_drop": lambda event, reason: drops.append((event, reason)),
            "on_delivered": evidence.events.append,
        }

    with umask(0):
        async with Emulator(write_key=SECRET) as emulator, Emulator(write_key="other") as other:
            faults = emulator.faults
            client = AsyncEncharge(
                SECRET,
                endpoint=emulator.url,
                spool=path,
                spool_after=0.05,
                max_retries=2,
                max_retry_time=5,
                timeout=0.3,
                retry_wait=tenacity.wait_random(0, 0.01),
                shutdown_timeout=0.3,
                **hooks(),
            )
            # With a spool a retryable failure is never given up on: the failure modes are
            # driven through a twin without one, so that each ends in a DeliveryError.
            twin = AsyncEncharge(
                SECRET,
                endpoint=emulator.url,
                max_retries=2,
                max_retry_time=5,
                timeout=0.3,
                retry_wait=tenacity.wait_random(0, 0.01),
                **hooks(),
            )
            async with client, twin:
                evidence.objects(client, twin)

                async def send(name: str) -> object:
                    return await evidence.acall(
                        lambda: twin.track(
                            name, user_id=name, properties={"m": MARKER}, wait=True, timeout=10
                        )
                    )

                assert isinstance(await send("ok"), str)
                faults.error_rate = 1.0  # 5xx
                assert isinstance(await send("5xx"), UNDELIVERED)
                faults.clear()
                faults.rate_limited_rate, faults.retry_after = 1.0, 0  # 429
                assert isinstance(await send("429"), UNDELIVERED)
                faults.clear()
                faults.drop_rate, faults.drop_mode = 1.0, "before"  # cut, not recorded
                assert isinstance(await send("cut-before"), UNDELIVERED)
                faults.drop_mode = "after"  # cut after recording
                assert isinstance(await send("cut-after"), UNDELIVERED)
                faults.clear()
                faults.latency = 1.0  # no answer within the client's timeout
                assert isinstance(await send("timeout"), UNDELIVERED)
                faults.clear()
                faults.slow_body = 1.0  # a 200 whose body stalls: its head counts
                assert isinstance(await send("slow-body"), str)
                faults.clear()
                # Validation errors (the key is in the client, never in these messages).
                for bad in (
                    lambda: client.track_nowait("", user_id="u"),
                    lambda: client.track_nowait("E"),
                    lambda: client.identify_nowait(email=b"a@b.c"),  # type: ignore[arg-type]
                    lambda: client.track_nowait("E", user_id="u", source_ip="not-an-ip"),
                    lambda: client.alias_nowait(email="a@b.c"),
                ):
                    assert isinstance(evidence.call(bad), ValidationError)
                # A second client on the same spool: locked.
                locked = AsyncEncharge(SECRET, endpoint=emulator.url, spool=path)
                assert isinstance(await evidence.acall(locked.__aenter__), SpoolLockedError)
                evidence.objects(locked)
                # Shutdown with a spool: events in flight (latency) are kept for next time.
                faults.latency = 5.0
                for n in range(5):
                    await client.track("kept", user_id=f"k{n}", properties={"m": MARKER})
                await wait_until(lambda: client.stats.queued == 0)  # all in flight
                evidence.objects(client, client.stats)
                modes.update(evidence.spool_files(path))  # while it runs
            closed = await client.aclose()
            evidence.objects(client, client.stats, closed)
            modes.update(evidence.spool_files(path))  # after close
            assert closed.spooled >= 5
            assert isinstance(
                evidence.call(lambda: client.track_nowait("late", user_id="u")), Exception
            )

            # 401: a key the endpoint does not know.
            async with AsyncEncharge(SECRET, endpoint=other.url, **hooks()) as refused:
                result = await evidence.acall(
                    lambda: refused.track("401", user_id="u", wait=True, timeout=10)
                )
                assert isinstance(result, DeliveryError)
                assert result.status == 401
                evidence.objects(refused, refused.stats)

            # A full queue and a shutdown without a spool: drops.
            faults.latency = 5.0
            dropping = AsyncEncharge(
                SECRET,
                endpoint=emulator.url,
                max_queue_size=1,
                max_concurrency=1,
                shutdown_timeout=0.1,
                **hooks(),
            )
            async with dropping:
                for n in range(5):
                    dropping.track_nowait("dropped", user_id="d", properties={"n": n})
                await wait_until(lambda: dropping.stats.in_flight == 1)
            evidence.objects(dropping, dropping.stats, await dropping.aclose())
            faults.clear()

        # Bad configuration.
        for configure in (
            lambda: AsyncEncharge(SECRET, endpoint="http://example.com/v1/"),
            lambda: AsyncEncharge(SECRET, max_queue_size=0),
            lambda: AsyncEncharge(SECRET, spool=""),
        ):
            assert isinstance(evidence.call(configure), ConfigurationError)

    for error in failures:
        evidence.exception(error)
    for event, reason in drops:
        evidence.objects(event, reason)
    evidence.objects(*evidence.events)
    records = caplog.records
    for record in records:
        evidence.texts.append(record.getMessage())
        evidence.texts.append(repr(record.args))
        if record.exc_info:
            evidence.texts.append(logging.Formatter().formatException(record.exc_info))
        evidence.texts.extend(repr(value) for value in vars(record).values())
    evidence.texts.append(caplog.text)

    statuses = {error.status for error in failures}
    reasons = {reason for _, reason in drops}
    # Every failure mode really happened.
    assert {503, 502, 500} & statuses
    assert {429, 401} <= statuses
    assert None in statuses  # cut connections and timeouts have no status
    assert any("timeout" in error.reason for error in failures)
    assert reasons >= {DropReason.QUEUE_FULL, DropReason.SHUTDOWN}
    assert any(record.levelno == logging.DEBUG for record in records)
    # The spool's bytes were really read: the marker of the kept events is in them.
    assert any(MARKER.encode() in blob for blob in evidence.blobs)

    leaks = [text for text in evidence.texts if SECRET in text]
    leaks += [blob[:200].decode("latin-1") for blob in evidence.blobs if SECRET.encode() in blob]
    assert not leaks, leaks[:3]
    assert modes
    assert all(mode == 0o600 for mode in modes.values()), modes
    summary(
        "secrets",
        log_records=len(records),
        texts_checked=len(evidence.texts),
        bytes_checked=sum(len(blob) for blob in evidence.blobs),
        exceptions=len(evidence.exceptions),
        failure_statuses=sorted(statuses, key=str),
        drop_reasons=sorted(reason.value for reason in reasons),
        spool_files={name: oct(mode) for name, mode in sorted(modes.items())},
        leaks=len(leaks),
        seconds=clock.elapsed,
    )
