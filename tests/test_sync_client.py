"""Encharge: the sync client, on its own loop in a background thread."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import tenacity

from encharge_async import (
    AsyncEncharge,
    ClientClosedError,
    ConfigurationError,
    DeliveryError,
    DropReason,
    Encharge,
    EventLoopError,
    FlushResult,
    QueueFullError,
    ValidationError,
    _background,
)
from encharge_async.emulator import Emulator
from encharge_async.testing import EnchargeRecorder

from .conftest import ENDPOINT, WRITE_KEY, block_until

ROOT = Path(__file__).resolve().parents[1]
THREAD_NAME = "encharge-async"

Make = Callable[..., Encharge]


def _delivered(client: Encharge) -> int:
    """Wait for the queue to drain; return how many events were delivered in all."""
    assert client.flush(timeout=5).complete
    return client.stats.delivered


def _env_with_root() -> dict[str, str]:
    """The environment for a child Python that imports this checkout."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def _client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


@pytest.fixture
def recorder() -> EnchargeRecorder:
    return EnchargeRecorder()


@pytest.fixture
def make(recorder: EnchargeRecorder) -> Iterator[Make]:
    """Build Encharge clients that deliver to `recorder`; close them all after the test."""
    clients: list[Encharge] = []

    def make(**kwargs: Any) -> Encharge:
        kwargs.setdefault("endpoint", ENDPOINT)
        kwargs.setdefault("retry_wait", tenacity.wait_none())
        kwargs.setdefault("shutdown_timeout", 5)
        kwargs.setdefault("transport", recorder)
        client = Encharge(WRITE_KEY, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout=1)


def test_same_options_and_calls_as_the_async_client() -> None:
    async_init = inspect.signature(AsyncEncharge.__init__).parameters
    sync_init = inspect.signature(Encharge.__init__).parameters
    for name, parameter in async_init.items():
        assert name in sync_init, name
        assert sync_init[name].default == parameter.default, name
        assert sync_init[name].kind == parameter.kind, name
    for method in ("track", "identify", "alias", "group"):
        async_params = inspect.signature(getattr(AsyncEncharge, method)).parameters
        sync_params = inspect.signature(getattr(Encharge, method)).parameters
        assert list(sync_params) == list(async_params), method


def test_configuration_is_checked_in_the_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCHARGE_WRITE_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="write key"):
        Encharge()
    with pytest.raises(ConfigurationError, match="atexit_timeout"):
        Encharge(WRITE_KEY, atexit_timeout=-1)
    with pytest.raises(ConfigurationError):
        Encharge(WRITE_KEY, endpoint="http://example.com/v1/")
    assert _client_threads() == []


def test_calls_queue_and_deliver_from_a_lazily_started_thread(
    make: Make, recorder: EnchargeRecorder
) -> None:
    client = make()
    assert repr(client) == f"<Encharge endpoint={ENDPOINT!r} state=new>"
    assert client.endpoint == ENDPOINT
    assert client.stats.enqueued == 0
    assert client.flush() == FlushResult()  # nothing started, nothing to wait for
    assert _client_threads() == []

    ids = [
        client.track("Registered user", email="jon@example.com", properties={"plan": "Pro"}),
        client.identify(user_id=42, user={"firstName": "Jon"}),
        client.alias(previous_email="jon@example.com", email="jon@new.example"),
        client.group("company", {"externalId": "acme"}, user_id=42),
    ]
    [thread] = _client_threads()
    assert thread.daemon
    assert "state=running" in repr(client)
    result = client.flush(timeout=5)
    assert result.complete
    assert client.stats.delivered == 4  # flush() waited for those still pending
    assert [r.message_id for r in recorder.events] == ids
    assert [r.name for r in recorder.events] == ["Registered user", "identify", "alias", "group"]
    assert recorder.events[0].body["properties"] == {"plan": "Pro"}
    assert recorder.events[0].headers["x-encharge-token"] == WRITE_KEY

    assert client.close() == FlushResult()  # everything was delivered already
    assert _client_threads() == []
    assert client.stats.delivered == 4
    assert "state=closed" in repr(client)


def test_validation_errors_are_raised_in_the_calling_thread(make: Make) -> None:
    client = make()
    with pytest.raises(ValidationError, match="email or a user_id"):
        client.track("No one")
    with pytest.raises(ValidationError, match="email"):
        client.identify(email="not an email")
    with pytest.raises(ValidationError, match="previous_email or previous_user_id"):
        client.alias(email="a@b.c")
    with pytest.raises(ValidationError, match="object_type"):
        client.group("", {"id": 1})
    with pytest.raises(ValidationError):
        client.track("No one", wait=True)  # the blocking path raises the same errors
    assert client.flush() == FlushResult()
    assert client.stats.enqueued == 0


@pytest.mark.slow
def test_threads_hammering_one_client(make: Make, recorder: EnchargeRecorder) -> None:
    client = make(max_concurrency=8)
    threads, per_thread = 8, 150
    errors: list[BaseException] = []
    ids: list[list[str]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def hammer(n: int) -> None:
        try:
            barrier.wait(5)
            for i in range(per_thread):
                ids[n].append(client.track("Step", user_id=f"user-{n}", properties={"i": i}))
                if i % 50 == 0:
                    client.flush(timeout=5)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=hammer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait(5)
    for worker in workers:
        worker.join(30)
    assert not errors
    assert not any(worker.is_alive() for worker in workers)
    assert len(_client_threads()) == 1  # one background thread, however many callers
    result = client.close()
    total = threads * per_thread
    assert client.stats.delivered == total
    assert result.dropped == 0
    events = recorder.events
    assert len(events) == total
    assert {e.message_id for e in events} == {mid for batch in ids for mid in batch}
    for n in range(threads):  # each person's events arrive in the order they were queued
        steps = [e.properties["i"] for e in events if e.user["userId"] == f"user-{n}"]
        assert steps == list(range(per_thread))


def test_wait_true_returns_once_delivered(make: Make, recorder: EnchargeRecorder) -> None:
    client = make()
    mid = client.track("Paid", user_id=1, wait=True, timeout=5)
    assert [e.message_id for e in recorder.events] == [mid]  # no flush needed
    mid = client.identify(user_id=1, user={"plan": "Pro"}, wait=True)
    assert recorder.events[-1].message_id == mid
    mid = client.alias(previous_user_id=1, user_id=2, wait=True)
    assert recorder.events[-1].message_id == mid
    mid = client.group("company", {"id": 7}, user_id=2, wait=True)
    assert recorder.events[-1].message_id == mid


def test_wait_true_raises_delivery_errors(make: Make, recorder: EnchargeRecorder) -> None:
    client = make(max_retries=1)
    recorder.fail_next(400, body={"error": "bad event"})
    with pytest.raises(DeliveryError, match="bad event") as refused:
        client.track("Paid", user_id=1, wait=True)
    assert refused.value.status == 400
    assert refused.value.attempts == 1
    recorder.fail_next(503)
    with pytest.raises(DeliveryError) as exhausted:
        client.track("Paid", user_id=1, wait=True)
    assert (exhausted.value.status, exhausted.value.attempts) == (503, 2)
    assert client.stats.failed == 2


@pytest.mark.slow
def test_wait_true_times_out_and_close_cuts_the_drain_short(
    make: Make, held: EnchargeRecorder
) -> None:
    drops: list[DropReason] = []
    client = make(transport=held, on_drop=lambda e, reason: drops.append(reason))
    with pytest.raises(TimeoutError):
        client.track("Held", user_id=1, wait=True, timeout=0.1)
    client.track("Held too", user_id=2)
    assert client.flush(timeout=0.05).pending == 2
    result = client.close(timeout=0.1)  # shorter than shutdown_timeout: cut short
    assert result == FlushResult(delivered=0, failed=0, dropped=2)
    assert drops == [DropReason.SHUTDOWN, DropReason.SHUTDOWN]
    assert client.close() is result  # idempotent
    held.release()


def test_close_waits_for_the_queue(make: Make, held: EnchargeRecorder) -> None:
    client = make(transport=held, max_concurrency=2)
    for i in range(5):
        client.track("Held", user_id=i)
    held.wait_for_requests_blocking(1)
    # Whenever the timer fires, the outcome is the same: not a synchronisation.
    threading.Timer(0.05, held.release).start()
    result = client.close()
    assert (result.failed, result.dropped, client.stats.delivered) == (0, 0, 5)
    assert held.received == 5


def test_calls_after_close_raise_and_close_is_idempotent(make: Make) -> None:
    client = make()
    client.track("E", user_id=1)
    first = client.close()
    assert (first.failed, first.dropped, client.stats.delivered) == (0, 0, 1)
    assert client.close(timeout=0) is first
    calls: list[Callable[[], object]] = [
        lambda: client.track("E", user_id=1),
        lambda: client.track("E", user_id=1, wait=True),
        lambda: client.identify(user_id=1),
        lambda: client.alias(previous_user_id=1, user_id=2),
        lambda: client.group("company", {"id": 1}),
    ]
    for call in calls:
        with pytest.raises(ClientClosedError):
            call()
    assert client.flush() == FlushResult()
    assert client.stats.delivered == 1


def test_close_before_any_call_starts_nothing(make: Make) -> None:
    with make() as client:
        pass
    assert client.close() == FlushResult()
    assert _client_threads() == []
    with pytest.raises(ClientClosedError):
        client.track("E", user_id=1)


def test_context_manager_closes(make: Make, recorder: EnchargeRecorder) -> None:
    with make() as client:
        client.track("E", user_id=1)
    assert len(recorder.events) == 1
    assert _client_threads() == []


def test_concurrent_closes_share_one_result(make: Make, held: EnchargeRecorder) -> None:
    client = make(transport=held)
    client.track("E", user_id=1)
    results: list[FlushResult] = []
    closers = [threading.Thread(target=lambda: results.append(client.close())) for _ in range(3)]
    for closer in closers:
        closer.start()
    held.release()
    for closer in closers:
        closer.join(10)
    assert len(results) == 3
    assert results[0] is results[1] is results[2]
    assert results[0].dropped == 0
    assert client.stats.delivered == 1


@pytest.mark.slow
def test_overflow_block_blocks_the_calling_thread(make: Make, held: EnchargeRecorder) -> None:
    client = make(transport=held, max_concurrency=1, max_queue_size=1, overflow="block")
    client.track("flying", user_id=1)
    held.wait_for_requests_blocking(1)
    client.track("queued", user_id=2)
    with pytest.raises(QueueFullError):
        client.track("no room", user_id=3, timeout=0.05)
    # Whenever the timer fires, the outcome is the same: not a synchronisation.
    threading.Timer(0.05, held.release).start()
    client.track("room made", user_id=4, timeout=5)  # blocks until the release makes room
    client.close()
    assert client.stats.delivered == 3
    assert client.stats.enqueued == 3


def test_calls_from_a_thread_running_another_event_loop(
    make: Make, recorder: EnchargeRecorder
) -> None:
    client = make()

    async def handler() -> tuple[str, FlushResult]:
        # A sync helper called from async code: the caller's loop is not the client's.
        mid = client.track("From async code", user_id=1)
        return mid, client.flush(timeout=5)

    mid, result = asyncio.run(handler())
    assert result.complete
    assert [e.message_id for e in recorder.events] == [mid]


def test_hooks_run_on_the_client_thread_and_cannot_block_it(
    make: Make, recorder: EnchargeRecorder
) -> None:
    seen: list[object] = []
    client: Encharge | None = None

    def on_delivered(event: Any) -> None:
        assert client is not None
        seen.append(threading.current_thread().name)
        if event.name != "First":
            return
        seen.append(client.track("From a hook", user_id=2))  # queues, never blocks
        for blocking in (
            lambda: client.track("E", user_id=2, wait=True),
            lambda: client.flush(),
            lambda: client.close(),
        ):
            try:
                blocking()
            except EventLoopError as exc:
                seen.append(type(exc))

    client = make(on_delivered=on_delivered)
    client.track("First", user_id=1)
    client.flush(timeout=5)
    client.flush(timeout=5)  # the hook's event, queued while the first flush ran
    assert seen[0] == THREAD_NAME
    assert seen[2:5] == [EventLoopError] * 3
    assert [e.message_id for e in recorder.events][1] == seen[1]


@pytest.mark.slow
def test_the_exit_handler_closes_started_clients(
    make: Make, recorder: EnchargeRecorder, held: EnchargeRecorder
) -> None:
    stuck = make(transport=held, atexit_timeout=0.1)
    stuck.track("Held", user_id=1)
    client = make()
    client.track("E", user_id=1)
    assert {stuck._background, client._background} <= _background._started_loops
    held.wait_for_requests_blocking(1)
    _background._close_at_exit()
    assert client.stats.delivered == 1
    assert stuck.stats.dropped == 1  # its atexit_timeout ran out
    assert _client_threads() == []
    with pytest.raises(ClientClosedError):
        client.track("E", user_id=1)
    held.release()


def test_a_start_that_fails_is_reported_and_retried(
    make: Make, monkeypatch: pytest.MonkeyPatch, recorder: EnchargeRecorder
) -> None:
    client = make()

    async def broken() -> AsyncEncharge:
        raise OSError("no certificates")

    monkeypatch.setattr(client._background.client, "__aenter__", broken)
    with pytest.raises(OSError, match="no certificates"):
        client.track("E", user_id=1)
    client.track("E", user_id=1)  # a fresh client, started afresh
    assert _delivered(client) == 1


@pytest.mark.slow
def test_a_start_that_hangs_is_abandoned(
    make: Make, monkeypatch: pytest.MonkeyPatch, recorder: EnchargeRecorder
) -> None:
    client = make()
    slow = client._background.client
    entered = threading.Event()
    original = slow.__aenter__

    async def slow_enter() -> AsyncEncharge:
        await asyncio.sleep(0.3)  # a start slower than _START_TIMEOUT, on purpose
        result = await original()
        entered.set()
        return result

    monkeypatch.setattr(slow, "__aenter__", slow_enter)
    monkeypatch.setattr(_background, "_START_TIMEOUT", 0.05)
    with pytest.raises(EventLoopError, match="did not start"):
        client.track("E", user_id=1)
    assert entered.wait(5)
    # The late thread closes its client and ends.
    block_until(lambda: _client_threads() == [])
    assert slow.stats.enqueued == 0
    monkeypatch.setattr(_background, "_START_TIMEOUT", 10.0)
    client.track("E", user_id=1)
    assert _delivered(client) == 1


def test_a_fork_the_at_fork_hooks_missed_is_detected(make: Make) -> None:
    # A C-level fork (uWSGI) runs no Python at-fork hook; a changed pid must be enough.
    client = make()
    client.track("E", user_id=1)
    client.flush(timeout=5)
    old_client, old_thread, old_loop, old_stop = (
        client._background.client,
        client._background.thread,
        client._background.loop,
        client._background.stop,
    )
    client._background.pid = -1  # as if this were a forked child
    assert client.stats.enqueued == 0  # a fresh client and queue
    assert _client_threads() == [old_thread]  # (this process is not really a child)
    client.track("In the child", user_id=1)
    assert _delivered(client) == 1
    assert client._background.thread is not old_thread
    # Stop what the "parent" left running.
    assert old_loop is not None
    assert old_stop is not None
    assert old_thread is not None
    assert old_loop in _background._orphaned_loops
    _background._orphaned_loops.remove(old_loop)
    asyncio.run_coroutine_threadsafe(old_client.aclose(), old_loop).result(5)
    old_loop.call_soon_threadsafe(old_stop.set)
    old_thread.join(5)
    assert not old_thread.is_alive()

    client.close()
    client._background.pid = -1
    with pytest.raises(ClientClosedError):  # closed in the parent: closed in the child
        client.track("E", user_id=1)
    assert client.close() == FlushResult()

    never_started = make()
    never_started._background.pid = -1
    assert never_started.stats.enqueued == 0
    never_started.track("E", user_id=1)
    assert _delivered(never_started) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_its_own_thread(make: Make, recorder: EnchargeRecorder) -> None:
    client = make()
    client.track("parent", user_id=1)
    assert _delivered(client) == 1
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a threaded process
        with (
            client._background.lock
        ):  # held by the parent at fork time: the child must not inherit it
            pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            report: dict[str, Any] = {
                "threads_before": len(_client_threads()),
                "stats_before": client.stats.enqueued,
            }
            recorder.clear()
            mid = client.track("child", user_id=2, wait=True, timeout=5)
            report["threads_after"] = len(_client_threads())
            report["sent"] = [e.name for e in recorder.events]
            report["mid_sent"] = recorder.events[0].message_id == mid
            report["close"] = client.close(timeout=5).delivered
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        client.track("parent again", user_id=1)
        assert _delivered(client) == 2
        statuses: list[int] = []

        def child_ended() -> bool:
            done, status = os.waitpid(pid, os.WNOHANG)
            statuses.append(status)
            return bool(done)

        block_until(child_ended, timeout=15, what="the forked child ended")  # finally kills it
        assert os.WEXITSTATUS(statuses[-1]) == 0
        with os.fdopen(read_end, "rb") as pipe:
            report = json.loads(pipe.read() or b"{}")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    assert report == {
        "threads_before": 0,
        "stats_before": 0,
        "threads_after": 1,
        "sent": ["child"],
        "mid_sent": True,
        "close": 0,
    }
    assert [e.name for e in recorder.events] == ["parent", "parent again"]


EXIT_SCRIPT = """
import asyncio, sys, httpx
from encharge_async import Encharge

async def handle(request):
    # Still in flight when the script ends (a slow server, on purpose): only the exit
    # handler can deliver them.
    await asyncio.sleep(3600 if sys.argv[1] == "hang" else 0.3)
    print(request.read().decode(), flush=True)
    return httpx.Response(200, json={})

encharge = Encharge(
    "k",
    endpoint="https://ingest.example.test/v1/",
    transport=httpx.MockTransport(handle),
    atexit_timeout=float(sys.argv[2]),
)
for i in range(5):
    encharge.track("Queued at exit", user_id=i)
print("exiting", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "atexit_timeout", "expected"), [("deliver", "10", 5), ("hang", "0.2", 0)]
)
def test_interpreter_exit_delivers_within_a_bound(
    mode: str, atexit_timeout: str, expected: int
) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(EXIT_SCRIPT), mode, atexit_timeout],
        capture_output=True,
        text=True,
        timeout=30,  # the exit handler is bounded by atexit_timeout: it must not hang
        env=_env_with_root(),
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    if expected:
        assert result.stderr == ""  # no warning, no traceback from the exit handler
    else:  # what the bound cut short is said, on stderr, with no logging configured
        assert result.stderr.splitlines() == [
            "the shutdown timeout (0.2s) ran out: 5 undelivered event(s) dropped "
            "(see on_drop; a spool= keeps them for the next start)"
        ]
    assert "exiting" in result.stdout
    assert result.stdout.count("Queued at exit") == expected


def test_calls_racing_the_end_of_the_loop(make: Make) -> None:
    client = make()
    client.track("E", user_id=1)
    loop = client._background.loop
    assert loop is not None
    started = threading.Event()
    outcome: list[BaseException] = []

    async def long_call() -> None:
        started.set()
        await asyncio.sleep(10)  # still running when the loop ends, on purpose

    def call_in_flight() -> None:
        try:
            client._background.run(loop, long_call, 10)
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call_in_flight)
    caller.start()
    assert started.wait(5)
    client.close()  # the loop ends under the call: it is cancelled
    caller.join(5)
    assert [type(exc) for exc in outcome] == [ClientClosedError]
    # A call that arrives once the loop has closed.
    with pytest.raises(ClientClosedError):
        client._background.run(loop, long_call, 10)
    client._background.state = (
        _background.LoopState.CLOSING
    )  # a flush that races the end of a close
    assert client.flush() == FlushResult()


@pytest.mark.slow
def test_a_stuck_background_thread_is_reported(
    make: Make, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    # A hook that blocks the client's thread: nothing answers calls made meanwhile.
    client = make(on_delivered=lambda event: release.wait(10), atexit_timeout=0)
    monkeypatch.setattr(_background, "_LOOP_MARGIN", 0.05)
    monkeypatch.setattr(_background, "TRANSPORT_CLOSE_TIMEOUT", 0.0)
    client.track("E", user_id=1)
    with pytest.raises(TimeoutError, match="did not answer"):
        client.flush(timeout=0)
    with pytest.raises(TimeoutError, match="did not close"):
        client.close(timeout=0)
    with caplog.at_level("ERROR", logger="encharge_async"):
        _background._started_loops.add(client._background)
        _background._close_at_exit()  # logs, never raises: the interpreter must exit
    assert "closing <Encharge" in caplog.text
    release.set()
    assert client.close(timeout=5).failed == 0


def test_the_loop_executor_runs_each_call_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    executor = _background._ThreadPerCall()
    name = executor.submit(lambda: threading.current_thread().name).result(5)
    assert name == "encharge-async-executor"
    with pytest.raises(ZeroDivisionError):
        executor.submit(lambda: 1 / 0).result(5)

    def refuse(thread: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    # At exit on Python 3.12, no thread may start: the call then runs in the caller.
    monkeypatch.setattr(threading.Thread, "start", refuse)
    future = executor.submit(lambda: threading.current_thread().name)
    assert future.result(0) == threading.current_thread().name


HOSTNAME_EXIT_SCRIPT = """
import sys
from encharge_async import Encharge

encharge = Encharge("k", endpoint=sys.argv[1])
for i in range(20):
    encharge.track("Queued at exit", user_id=i)
"""


@pytest.mark.slow
@pytest.mark.asyncio
async def test_exit_handler_can_open_connections_to_a_host_name() -> None:
    # At exit, ThreadPoolExecutor refuses work, and asyncio resolves host names in one:
    # the exit drain must still be able to connect to "localhost" (or ingest.encharge.io).
    async with Emulator(write_key="k", latency=0.2) as emulator:
        endpoint = f"http://localhost:{emulator.port}/v1/"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-W",
            "error",
            "-c",
            textwrap.dedent(HOSTNAME_EXIT_SCRIPT),
            endpoint,
            cwd=ROOT,
            env=_env_with_root(),
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, stderr.decode()
        assert stderr == b""
        assert len(emulator.events) == 20


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.anyio
async def test_a_fork_waits_for_a_client_that_is_starting(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """gunicorn --preload forks right after loading the app, which may have just sent its
    first event: the fork waits (bounded) until that client's thread has started, so the
    child inherits no lock held half-way, and its own client delivers."""
    if anyio_backend != "asyncio":
        pytest.skip("the emulator runs on asyncio")
    from encharge_async import _dispatcher

    real = _dispatcher.create_tls_context  # type: ignore[attr-defined]

    def slow_tls(verify: Any) -> Any:
        time.sleep(0.3)  # a slow CA bundle: the start is still under way when we fork
        return real(verify)

    monkeypatch.setattr(_dispatcher, "create_tls_context", slow_tls)
    async with Emulator(write_key="k") as emulator:
        endpoint = f"http://127.0.0.1:{emulator.port}/v1/"
        client = Encharge("k", endpoint=endpoint, shutdown_timeout=5)
        starter = threading.Thread(target=lambda: client.track("parent", user_id="p"))
        starter.start()
        with anyio.fail_after(5):
            while _background._starting == 0:  # noqa: ASYNC110 - until the start is under way
                await anyio.sleep(0.001)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 3
            try:
                client.track("child", user_id="c")
                code = 0 if client.close(timeout=5).delivered == 1 else 1
            finally:
                os._exit(code)
        assert _background._starting == 0  # the fork waited for the start to finish
        with anyio.fail_after(20):
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:  # noqa: ASYNC110, ASYNC222
                await anyio.sleep(0.01)
        assert os.waitstatus_to_exitcode(done[1]) == 0
        starter.join(5)
        client.close(timeout=5)
        assert client.stats.delivered == 1
        names = sorted(str(record.name) for record in emulator.events)
    assert names == ["child", "parent"]


@pytest.mark.parametrize("timeout", [-10, "5", float("nan"), float("inf"), True])
def test_a_blocking_call_checks_its_timeout_in_the_callers_thread(
    make: Make, recorder: EnchargeRecorder, timeout: Any
) -> None:
    client = make()
    with pytest.raises(ValidationError, match="timeout must be a finite number of seconds >= 0"):
        client.track("E", user_id="1", wait=True, timeout=timeout)
    assert client.flush(timeout=5).delivered == 0
    assert recorder.requests == []


@pytest.mark.parametrize("timeout", [-1, "x", float("nan"), float("inf")])
def test_a_bad_close_or_flush_timeout_raises_and_loses_nothing(
    make: Make, recorder: EnchargeRecorder, timeout: Any
) -> None:
    """Found by a trial run: a bad close() timeout used to stop the loop half-way, its
    events stranded in flight for good."""
    client = make()
    for i in range(5):
        client.track("E", user_id=str(i))
    with pytest.raises(ValidationError, match="timeout must be a finite number"):
        client.flush(timeout=timeout)
    with pytest.raises(ValidationError, match="timeout must be a finite number"):
        client.close(timeout=timeout)
    client.close(timeout=5)
    stats = client.stats
    assert (stats.delivered, stats.queued, stats.in_flight) == (5, 0, 0)
    assert len(recorder.requests) == 5


def test_a_timeout_is_checked_even_when_the_call_does_not_block(
    make: Make, recorder: EnchargeRecorder
) -> None:
    client = make()
    with pytest.raises(ValidationError, match="timeout must be a finite number"):
        client.track("E", user_id="1", timeout=-1)
    assert client.track("E", user_id="2", timeout=5)
    client.close(timeout=5)
    assert client.stats.delivered == 1
    assert len(recorder.requests) == 1
