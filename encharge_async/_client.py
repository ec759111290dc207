"""AsyncEncharge: enqueue on the caller's line, deliver from a background worker."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import logging
import os
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from threading import get_ident
from types import TracebackType
from typing import Any, Final

import anyio
import httpx

from . import _config
from ._constants import (
    DEFAULT_BLOCK_TIMEOUT,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_TIME,
    DEFAULT_OVERFLOW,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_SPOOL_AFTER,
    DEFAULT_SPOOL_MAX_AGE,
    DEFAULT_SPOOL_MAX_BYTES,
    DEFAULT_SPOOL_MODE,
    DEFAULT_TIMEOUT,
    DROP_WARNING_INTERVAL,
    QUEUE_PRUNE_SLACK,
    TRANSPORT_CLOSE_TIMEOUT,
)
from ._events import (
    DELIVERED,
    DROPPED,
    FAILED,
    IN_FLIGHT,
    QUEUED,
    Event,
    build_alias,
    build_group,
    build_identify,
    build_track,
    sequence,
)
from ._exceptions import (
    ClientClosedError,
    ConfigurationError,
    DeliveryError,
    EventLoopError,
    QueueFullError,
    ValidationError,
)
from ._http11 import Http11Transport, httpx_is_mocked
from ._ordering import Lanes
from ._retry import RetryPolicy, default_wait
from ._runtime import LoopBinding, bind_current_loop
from ._sender import Attempt, Outcome, Sender
from ._spool import Spool, SpoolLimits
from ._spooler import Spooler
from ._stats import FlushResult, Stats
from ._types import DropReason, OnDelivered, OnDrop, OnError, Overflow, RetryWait, SpoolMode

__all__ = ["AsyncEncharge"]

logger = logging.getLogger("encharge_async")


class ClientState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_OPEN: Final = ClientState.OPEN


class _FlushWaiter:
    """Counts down the events a flush() waits for: those enqueued before it was called."""

    __slots__ = ("delivered", "done", "dropped", "failed", "remaining", "target")

    def __init__(self, target: int, remaining: int) -> None:
        self.target = target
        self.remaining = remaining
        self.delivered = self.failed = self.dropped = 0
        self.done = anyio.Event()

    def record(self, state: int) -> None:
        if state == DELIVERED:
            self.delivered += 1
        elif state == FAILED:
            self.failed += 1
        else:
            self.dropped += 1
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()

    def result(self) -> FlushResult:
        return FlushResult(self.delivered, self.failed, self.dropped, self.remaining)


class _Waiter:
    """A caller awaiting its event's outcome (`wait=True`): set when it is known."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: Exception | None = None


_live_clients: weakref.WeakSet[AsyncEncharge] = weakref.WeakSet()


def _no_loop() -> object | None:
    return None


class _ThreadProbe:
    """For loops other than asyncio's: `_thread_id` is their thread while the runner lives."""

    __slots__ = ("_thread_id",)

    def __init__(self) -> None:
        self._thread_id: int | None = None


async def _load_ssl_context() -> ssl.SSLContext:
    """Load the CA bundle (~20 ms) in a thread, off the event loop, when threads may start.

    At interpreter exit (an atexit flush) Python refuses new threads: load it inline then.
    """
    try:
        return await anyio.to_thread.run_sync(httpx.create_ssl_context)
    except RuntimeError:
        return httpx.create_ssl_context()


def _no_divert(event: Event) -> None:  # pragma: no cover - only called while diverting
    raise AssertionError("events are diverted only when a spooler exists")


class AsyncEncharge:
    """An asyncio (and trio) client for the Encharge Ingest API.

    Calls validate and serialise the event on the caller's line, queue it, and return; a
    background worker owned by the client delivers the queue concurrently, retrying with
    backoff, keeping each person's events in order. Use it as an async context manager, or
    call `aclose()` from the application's shutdown (lifespan) code.

    Raises:
        ConfigurationError: a missing or empty write key, a plain-http endpoint that is not
            loopback, a non-positive size, an unknown overflow policy or an async hook.
    """

    def __init__(
        self,
        write_key: str | None = None,
        *,
        endpoint: str | httpx.URL | None = None,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        overflow: Overflow = DEFAULT_OVERFLOW,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_time: float = DEFAULT_MAX_RETRY_TIME,
        timeout: float = DEFAULT_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        on_error: OnError | None = None,
        on_drop: OnDrop | None = None,
        on_delivered: OnDelivered | None = None,
        retry_wait: RetryWait | None = None,
        spool: str | os.PathLike[str] | Spool | None = None,
        spool_mode: SpoolMode = DEFAULT_SPOOL_MODE,
        spool_after: float = DEFAULT_SPOOL_AFTER,
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        spool_max_age: float = DEFAULT_SPOOL_MAX_AGE,
    ) -> None:
        self._write_key = _config.resolve_write_key(write_key)
        self._url = _config.resolve_endpoint(endpoint)
        self._max_queue_size = _config.check_positive_int("max_queue_size", max_queue_size)
        self._max_queue_bytes = _config.check_positive_int("max_queue_bytes", max_queue_bytes)
        self._max_event_bytes = _config.check_positive_int("max_event_bytes", max_event_bytes)
        if self._max_event_bytes > self._max_queue_bytes:
            raise ConfigurationError(
                f"max_event_bytes={max_event_bytes} is larger than max_queue_bytes="
                f"{max_queue_bytes}: such an event could never be queued"
            )
        self._overflow = _config.check_overflow(overflow)
        self._spool_target = _config.check_spool(spool)
        self._spool_always = _config.check_spool_mode(spool_mode) == "always"
        self._spool_after = _config.check_seconds("spool_after", spool_after)
        self._spool_limits = SpoolLimits(
            max_bytes=_config.check_positive_int("spool_max_bytes", spool_max_bytes),
            max_age=_config.check_seconds("spool_max_age", spool_max_age),
        )
        # Whether track() etc. may queue and return without awaiting anything.
        self._never_blocks = self._overflow != "block" and not (
            self._spool_always and self._spool_target is not None
        )
        self._max_concurrency = _config.check_positive_int("max_concurrency", max_concurrency)
        self._timeout = _config.check_seconds("timeout", timeout)
        self._shutdown_timeout = _config.check_seconds(
            "shutdown_timeout", shutdown_timeout, allow_zero=True
        )
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise ConfigurationError(
                f"transport must be an httpx.AsyncBaseTransport, got {type(transport).__name__}"
            )
        self._user_transport = transport
        self._on_error = _config.check_hook("on_error", on_error)
        self._on_drop = _config.check_hook("on_drop", on_drop)
        self._on_delivered = _config.check_hook("on_delivered", on_delivered)
        self._policy = RetryPolicy(
            wait=retry_wait if retry_wait is not None else default_wait(),
            max_retries=_config.check_non_negative_int("max_retries", max_retries),
            max_retry_time=_config.check_seconds("max_retry_time", max_retry_time),
        )
        self._state = ClientState.UNOPENED
        self._close_result: FlushResult | None = None
        self._reset()
        _live_clients.add(self)

    def _reset(self) -> None:
        """Fresh queue, counters and runtime state (at construction, and in a forked child)."""
        self._binding: LoopBinding | None = None
        self._loop_token: object = None
        self._current_loop: Callable[[], object | None] = _no_loop
        self._loop_thread = 0
        # The hot path's cheap form of "on the client's running loop": open (True from the
        # start until closing begins or the runner ends), and the probe's `_thread_id` is
        # the calling thread. asyncio's loop sets `_thread_id` only while it runs; asking
        # for the running loop instead makes a getpid() system call each time.
        self._accepting = False
        self._probe: Any = _ThreadProbe()
        # Queued events (not in flight, not finished) in the order drop_oldest and shutdown
        # take them; entries of events that have left are skipped and pruned (cheaper than
        # an OrderedDict: 8 bytes per event instead of ~100).
        self._queued: deque[Event] = deque()
        self._queued_count = 0
        self._queued_bytes = 0
        self._in_flight: set[Event] = set()
        self._lanes = Lanes()
        self._retry_heap: list[tuple[float, int, Event]] = []
        self._flush_waiters: list[_FlushWaiter] = []
        self._spooler: Spooler | None = None
        # True while events go through the spooler rather than straight to memory.
        self._divert = False
        self._divert_event: Callable[[Event], None] = _no_divert
        self._spilled_count = 0
        self._failing_since: float | None = None
        # Called with (event, seconds from its first attempt) as each event is delivered.
        self._delivery_listeners: list[Callable[[Event, float], None]] = []
        self._paused_until = 0.0
        self._close_deadline = 0.0
        self._enqueued = self._delivered = self._failed = self._dropped = self._retried = 0
        self._drops_unreported = 0
        self._last_drop_warning = -DROP_WARNING_INTERVAL
        # Without a transport of the user's, each worker gets a one-connection transport of
        # its own: httpcore's shared pool costs O(requests x connections) CPU per request.
        self._transports: list[httpx.AsyncBaseTransport] = []
        self._shared_sender: Sender | None = None
        self._ssl_context: ssl.SSLContext | None = None
        # Events handed over by other threads (deque appends and pops are atomic), and
        # whether the loop has been asked to take them.
        self._handed_over: deque[Event] = deque()
        self._take_scheduled = False
        # Accepted events not yet admitted into the ordering; events heading all their
        # lanes; the idle workers waiting for one.
        self._incoming: deque[Event] = deque()
        self._ready: deque[Event] = deque()
        self._idle_workers: deque[anyio.Event] = deque()
        self._space: anyio.Event | None = None
        self._timer_wakeup: anyio.Event | None = None
        self._closing: anyio.Event | None = None
        self._closed: anyio.Event | None = None
        self._runner_scope: anyio.CancelScope | None = None
        self._runner_done: anyio.Event | None = None
        self._runner: object = None

    # -- public API ------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncEncharge:
        """Start the client; with a spool, open it here so that its errors reach you.

        Raises:
            ClientClosedError: the client was closed.
            EventLoopError: the client runs on another event loop.
            SpoolError: the spool cannot be used (SpoolLockedError: another process has it).
        """
        self._enter_loop()
        spooler = self._spooler
        if spooler is not None and not await spooler.open() and spooler.open_error is not None:
            await self.aclose()
            raise spooler.open_error
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"<AsyncEncharge endpoint={str(self._url)!r} state={self._state.value} "
            f"queued={self._queued_count} in_flight={len(self._in_flight)}>"
        )

    @property
    def endpoint(self) -> str:
        """The URL events are posted to."""
        return str(self._url)

    @property
    def stats(self) -> Stats:
        """A snapshot of the client's counters (see `Stats`)."""
        return Stats(
            enqueued=self._enqueued,
            delivered=self._delivered,
            failed=self._failed,
            dropped=self._dropped,
            retried=self._retried,
            queued=self._queued_count,
            in_flight=len(self._in_flight),
            queued_bytes=self._queued_bytes,
            spooled=self._spooler.count if self._spooler is not None else 0,
        )

    async def track(
        self,
        name: str,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
        source_ip: str | None = None,
        message_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Queue an event about a person; return its message id.

        `email` / `user_id` identify the person (at least one, here or in `user`); other
        `user` fields update the person; `properties` describe the event. `message_id`
        (default: a fresh unique id) is sent as the `Idempotency-Key` header; pass your own
        to make re-sends of one event recognisable. With `wait=True`, return only once
        Encharge accepted it. `timeout` bounds the wait for room (under
        `overflow="block"`) and for delivery (with `wait=True`).

        Raises:
            ValidationError: the event is invalid (the message names the field).
            ClientClosedError: the client is closing or closed.
            QueueFullError: no room before `timeout` under `overflow="block"`, or, with
                `wait=True`, the event was dropped because the queue was full.
            DeliveryError: with `wait=True`, the event was refused or given up on.
            TimeoutError: with `wait=True`, no outcome within `timeout`.
        """
        event = build_track(
            name, email, user_id, user, properties, source_ip, self._max_event_bytes, message_id
        )
        if not wait and self._never_blocks:
            self._put_nowait(event)  # the common case, without a second coroutine
            return event.message_id
        return await self._submit(event, wait, timeout)

    async def identify(
        self,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Queue a create-or-update of a person's fields; return its message id.

        Raises the same errors as `track`.
        """
        event = build_identify(
            email=email,
            user_id=user_id,
            user=user,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        if not wait and self._never_blocks:
            self._put_nowait(event)  # the common case, without a second coroutine
            return event.message_id
        return await self._submit(event, wait, timeout)

    async def alias(
        self,
        *,
        previous_email: str | None = None,
        previous_user_id: str | int | None = None,
        email: str | None = None,
        user_id: str | int | None = None,
        message_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Queue a change of a person's email and/or user id; return its message id.

        It is delivered after everything queued before it for the previous identifiers, and
        before everything queued after it for the new ones. Raises the same errors as `track`.
        """
        event = build_alias(
            previous_email=previous_email,
            previous_user_id=previous_user_id,
            email=email,
            user_id=user_id,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        if not wait and self._never_blocks:
            self._put_nowait(event)  # the common case, without a second coroutine
            return event.message_id
        return await self._submit(event, wait, timeout)

    async def group(
        self,
        object_type: str,
        properties: Mapping[str, Any],
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Queue a create-or-update of a custom object (a company, say); return its message id.

        `properties` holds the object's fields (`externalId` or `id` to update one); a person
        given by `email` / `user_id` / `user` is associated with it. Raises the same errors
        as `track`.
        """
        event = build_group(
            object_type,
            properties,
            email=email,
            user_id=user_id,
            user=user,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        if not wait and self._never_blocks:
            self._put_nowait(event)  # the common case, without a second coroutine
            return event.message_id
        return await self._submit(event, wait, timeout)

    def track_nowait(
        self,
        name: str,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
        source_ip: str | None = None,
        message_id: str | None = None,
    ) -> str:
        """`track` for plain functions: queue the event without awaiting; return its id.

        Call it on the client's event loop, or from another thread while that loop runs.

        Raises:
            ValidationError: the event is invalid.
            ClientClosedError: the client is closing or closed.
            QueueFullError: the queue is full under `overflow="block"` (no waiting here).
            EventLoopError: called from a different event loop, or before the client was
                started when no loop is running.
        """
        event = build_track(
            name, email, user_id, user, properties, source_ip, self._max_event_bytes, message_id
        )
        self._put_nowait(event)
        return event.message_id

    def identify_nowait(
        self,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str:
        """`identify` for plain functions; raises like `track_nowait`."""
        event = build_identify(
            email=email,
            user_id=user_id,
            user=user,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        self._put_nowait(event)
        return event.message_id

    def alias_nowait(
        self,
        *,
        previous_email: str | None = None,
        previous_user_id: str | int | None = None,
        email: str | None = None,
        user_id: str | int | None = None,
        message_id: str | None = None,
    ) -> str:
        """`alias` for plain functions; raises like `track_nowait`."""
        event = build_alias(
            previous_email=previous_email,
            previous_user_id=previous_user_id,
            email=email,
            user_id=user_id,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        self._put_nowait(event)
        return event.message_id

    def group_nowait(
        self,
        object_type: str,
        properties: Mapping[str, Any],
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str:
        """`group` for plain functions; raises like `track_nowait`."""
        event = build_group(
            object_type,
            properties,
            email=email,
            user_id=user_id,
            user=user,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        self._put_nowait(event)
        return event.message_id

    async def flush(self, timeout: float | None = None) -> FlushResult:
        """Wait until every event enqueued so far is delivered, failed or dropped.

        Returns what happened to them, and how many were still pending when `timeout`
        (default: `shutdown_timeout`) ran out. Events enqueued meanwhile are not waited for.

        Raises:
            EventLoopError: called from an event loop other than the client's.
        """
        if self._state is ClientState.UNOPENED or self._state is ClientState.CLOSED:
            await anyio.lowlevel.checkpoint()
            return FlushResult()
        self._check_loop()
        bound = self._shutdown_timeout if timeout is None else timeout
        result = await self._wait_for_enqueued(bound)
        if result == FlushResult():
            await anyio.lowlevel.checkpoint()  # like every async call: a chance to switch
        return result

    async def aclose(self, timeout: float | None = None) -> FlushResult:
        """Stop accepting events, deliver what is queued within `timeout`, close.

        `timeout` defaults to `shutdown_timeout`. Backoff sleeps are cut short as the
        deadline nears; what is still undelivered at the deadline is cancelled, kept in the
        spool if there is one, else counted in `stats.dropped` and reported to `on_drop`
        with `DropReason.SHUTDOWN`. Returns what happened to the events that were pending
        (also when `aclose()` itself is cancelled). Calling it again returns the same result.

        Raises:
            EventLoopError: called from an event loop other than the client's.
        """
        bound = (
            self._shutdown_timeout
            if timeout is None
            else _config.check_seconds("timeout", timeout, allow_zero=True)
        )
        if self._state is ClientState.CLOSED:
            return self._close_result or FlushResult()
        if self._state is ClientState.UNOPENED:
            self._state = ClientState.CLOSED
            self._close_result = FlushResult()
            if self._user_transport is not None:
                await self._close_transport(self._user_transport)
            return self._close_result
        self._check_loop()
        if self._state is ClientState.CLOSING:
            # Another task is closing; wait for it within the same bound.
            assert self._closed is not None
            with anyio.move_on_after(bound + 2 * TRANSPORT_CLOSE_TIMEOUT):
                await self._closed.wait()
            return self._close_result or FlushResult()
        self._begin_closing(bound)
        # Nothing new is accepted from here on: the counters' growth is what closing did,
        # which stays right even if this call is cancelled half-way.
        before = self.stats
        try:
            await self._wait_for_enqueued(bound)
        finally:
            with anyio.CancelScope(shield=True):
                _, held = await self._stop_runner(bound)
                for transport in self._transports:
                    await self._close_transport(transport)
                after = self.stats
                result = self._close_result = FlushResult(
                    delivered=after.delivered - before.delivered,
                    failed=after.failed - before.failed,
                    dropped=after.dropped - before.dropped,
                    pending=0,
                    spooled=held,
                )
                self._state = ClientState.CLOSED
                assert self._closed is not None
                self._closed.set()
        logger.debug("client closed: %s", result)
        return result

    # -- enqueue -----------------------------------------------------------------------------

    async def _submit(self, event: Event, wait: bool, timeout: float | None) -> str:
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not timeout >= 0  # also refuses NaN
        ):
            raise ValidationError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        if self._state is _OPEN and self._current_loop() is not self._loop_token:
            # Waiting needs the client's own loop; only a plain hand-off crosses loops.
            raise self._wrong_loop_error()
        if wait:
            event._waiter = _Waiter()
        if self._overflow == "block":
            await self._put_blocking(event, DEFAULT_BLOCK_TIMEOUT if timeout is None else timeout)
        else:
            self._put_nowait(event)
        spooler = self._spooler
        if self._spool_always and spooler is not None and getattr(event, "_spooled", False):
            # Durable before returning: wait for the writer's commit of this event's batch.
            commit = spooler.current_commit if event in spooler.writing else spooler.next_commit
            with anyio.fail_after(DEFAULT_BLOCK_TIMEOUT if timeout is None else timeout):
                await commit.wait()
        if wait:
            await self._wait_outcome(event, timeout)
        return event.message_id

    def _put_nowait(self, event: Event) -> None:
        """The hot path: checks, bound test, queue. No locks, no I/O, no task."""
        if (
            not self._accepting or self._probe._thread_id != get_ident()
        ) and self._enter_loop_or_thread(event):
            return
        if self._divert:
            self._divert_event(event)
            return
        size = len(event.body)
        if (
            self._queued_count >= self._max_queue_size
            or self._queued_bytes + size > self._max_queue_bytes
        ) and not self._make_room(event):
            return
        # `_accept`, inlined (the hot path; 3% of a call's cost): keep the two in step.
        self._enqueued += 1
        event.seq = next(sequence)
        self._queued.append(event)
        self._queued_count += 1
        self._queued_bytes += size
        self._incoming.append(event)
        if self._idle_workers:
            self._idle_workers.popleft().set()

    def _enter_loop_or_thread(self, event: Event) -> bool:
        """Slow path of `_put_nowait`: start the client, or hand the event over from a thread.

        Returns True when the event was handed to another thread's loop.
        """
        if self._state is _OPEN:
            assert self._binding is not None
            if get_ident() != self._loop_thread:
                # Another thread (a sync handler in a thread pool, or a thread running its
                # own loop): the client's loop takes the event from here.
                if self._overflow == "block" and self._is_full(event):
                    raise QueueFullError(
                        "the queue is full and overflow='block': a call from another thread "
                        "cannot wait for room"
                    )
                self._hand_over(event)
                return True
            current = self._binding.current()
            if current is self._loop_token:
                return False  # on the client's loop after all
            if current is None:  # the loop's thread, the loop stopped
                self._hand_over(event)
                return True
            raise self._wrong_loop_error()
        self._enter_loop()
        return False

    def _hand_over(self, event: Event) -> None:
        """From another thread: queue `event` for the client's loop to take.

        Only the first of a burst wakes the loop (a system call, and a loop thread that then
        competes for the GIL); the rest join the batch it takes.
        """
        # Fix the id now: spelled out later, it could be read here before the loop numbers
        # the event and there after, two different ids for one event.
        event._message_id = event.message_id
        assert self._binding is not None
        self._handed_over.append(event)
        if not self._take_scheduled:
            self._take_scheduled = True
            try:
                self._binding.call_soon_threadsafe(self._take_handed_over)
            except BaseException:
                self._take_scheduled = False
                with contextlib.suppress(ValueError):
                    self._handed_over.remove(event)
                raise

    def _take_handed_over(self) -> None:
        # Cleared first: an event handed over from now on schedules another call.
        self._take_scheduled = False
        handed_over = self._handed_over
        while handed_over:
            self._put_from_thread(handed_over.popleft())

    def _put_from_thread(self, event: Event) -> None:
        if self._state is not _OPEN:
            self._drop(event, DropReason.SHUTDOWN)
        elif (
            self._overflow == "block"
            and not self._divert
            and not self._can_spill()
            and self._is_full(event)
        ):
            # The calling thread has moved on; there is nobody left to wait or to raise to.
            self._drop(event, DropReason.QUEUE_FULL)
        else:
            self._put_nowait(event)  # on the loop now: the same path as a call made here

    def _can_spill(self) -> bool:
        return self._spooler is not None and self._spooler.usable

    def _is_full(self, event: Event) -> bool:
        return (
            self._queued_count >= self._max_queue_size
            or self._queued_bytes + len(event.body) > self._max_queue_bytes
        )

    def _make_room(self, event: Event) -> bool:
        """Apply the overflow policy to a full queue; True when `event` may now be accepted."""
        if self._spooler is not None and self._spooler.usable:
            self._spooler.take(event)  # the spool takes the overflow instead of dropping it
            return False
        if self._overflow == "drop_oldest":
            queued = self._queued
            # An empty queue always has room: max_event_bytes <= max_queue_bytes.
            while self._queued_count and self._is_full(event):
                while queued[0]._state != QUEUED:
                    queued.popleft()
                oldest = queued[0]
                self._unqueue(oldest)
                self._drop(oldest, DropReason.QUEUE_FULL)
            return True
        if self._overflow == "block":
            raise QueueFullError(
                "the queue is full and overflow='block': the *_nowait methods cannot wait for "
                "room; await the async method instead"
            )
        self._drop(event, DropReason.QUEUE_FULL)
        if event._waiter is not None:
            raise QueueFullError(
                f"the queue is full; event {event.name!r} (message id {event.message_id}) "
                "was dropped"
            )
        return False

    def _accept(self, event: Event) -> None:
        """Queue `event`; the workers admit it into the ordering (off the caller's line).

        An event coming back from the spool keeps its number (its place in flush order),
        unless an earlier process left it.
        """
        if not event.seq:
            self._enqueued += 1
            event.seq = next(sequence)
        event._state = QUEUED
        self._queued.append(event)
        self._queued_count += 1
        self._queued_bytes += len(event.body)
        self._incoming.append(event)
        if self._idle_workers:
            self._idle_workers.popleft().set()

    def _admit_incoming(self) -> None:
        """Admit accepted events into the per-person ordering, in the order they came."""
        incoming = self._incoming
        admit = self._lanes.admit
        ready = self._ready
        while incoming:
            event = incoming.popleft()
            # One dropped meanwhile (drop_oldest) never joins its lanes.
            if event._state == QUEUED and admit(event):
                ready.append(event)

    def _update_divert(self) -> None:
        spooler = self._spooler
        self._divert = (
            spooler is not None and spooler.usable and (spooler.spilling or spooler.always)
        )

    async def _put_blocking(self, event: Event, timeout: float) -> None:
        self._put_nowait_or_full(event)
        if event._state == DROPPED:
            raise QueueFullError(f"no room for event {event.name!r}, in memory or in the spool")
        if event.seq:
            return
        with anyio.move_on_after(timeout):
            while not event.seq:
                if self._space is None:
                    self._space = anyio.Event()
                await self._space.wait()
                self._put_nowait_or_full(event)
        if not event.seq:
            raise QueueFullError(
                f"no room in the queue within {timeout:g}s for event {event.name!r}"
            )

    def _put_nowait_or_full(self, event: Event) -> None:
        """Accept `event` if it fits; leave `event.seq` at 0 when the queue is full."""
        if self._state is not _OPEN or self._current_loop() is not self._loop_token:
            self._enter_loop()
        if self._divert or (self._is_full(event) and self._can_spill()):
            self._divert_event(event)  # the spool never makes anyone wait
        elif not self._is_full(event):
            self._accept(event)

    def _enter_loop(self) -> None:
        """Start on the running loop, or check that we are on the one we started on."""
        if self._state is ClientState.UNOPENED:
            self._start(bind_current_loop())
        elif self._state is not _OPEN:
            raise ClientClosedError(f"the client is {self._state.value}; create a new one")
        else:
            self._check_loop()

    def _check_loop(self) -> None:
        assert self._binding is not None
        if self._binding.current() is not self._loop_token:
            raise self._wrong_loop_error()

    def _wrong_loop_error(self) -> EventLoopError:
        return EventLoopError(
            "this AsyncEncharge runs on another event loop (it was started there); use one "
            "client per event loop, for instance one per process created in the app's lifespan"
        )

    async def _wait_outcome(self, event: Event, timeout: float | None) -> None:
        if timeout is None:
            timeout = self._policy.max_retry_time + self._timeout + self._shutdown_timeout
        with anyio.fail_after(timeout):
            await event._waiter.done.wait()
        if event._waiter.error is not None:
            raise event._waiter.error

    # -- lifecycle ---------------------------------------------------------------------------

    def _start(self, binding: LoopBinding) -> None:
        self._binding = binding
        self._loop_token = binding.token
        self._current_loop = binding.current
        self._loop_thread = threading.get_ident()
        self._closing = anyio.Event()
        self._closed = anyio.Event()
        self._runner_scope = anyio.CancelScope()
        self._runner_done = anyio.Event()
        if self._user_transport is not None:
            self._transports = [self._user_transport]
            self._shared_sender = self._make_sender(self._user_transport)
        if self._spool_target is not None:
            self._spooler = Spooler(
                self, self._spool_target, always=self._spool_always, limits=self._spool_limits
            )
            self._divert_event = self._spooler.take
            self._update_divert()
        self._state = _OPEN
        if isinstance(binding.token, asyncio.BaseEventLoop):
            self._probe = binding.token
        else:  # trio, uvloop: the runner's thread, while the runner lives
            self._probe._thread_id = self._loop_thread
        self._accepting = True
        self._runner = binding.spawn(self._run)

    async def _run(self) -> None:
        assert self._runner_scope is not None
        assert self._runner_done is not None
        try:
            with self._runner_scope:
                if self._user_transport is None:
                    self._ssl_context = await _load_ssl_context()
                async with anyio.create_task_group() as tg:
                    for _ in range(self._max_concurrency):
                        tg.start_soon(self._worker)
                    tg.start_soon(self._timer)
                    if self._spooler is not None:
                        tg.start_soon(self._spooler.run)
        except Exception:  # pragma: no cover - a bug: say so rather than stall silently
            logger.exception("the delivery runner crashed; events are no longer delivered")
            raise
        finally:
            self._accepting = False
            if isinstance(self._probe, _ThreadProbe):
                self._probe._thread_id = None
            self._runner_done.set()

    def _begin_closing(self, timeout: float) -> None:
        self._state = ClientState.CLOSING
        self._accepting = False
        now = anyio.current_time()
        self._close_deadline = now + timeout
        assert self._closing is not None
        self._closing.set()
        # Parked retries are tried now rather than after the app has gone; if they fail
        # again, their backoff is clamped so one last attempt still fits before the deadline.
        if self._retry_heap:
            self._retry_heap = [(now, seq, event) for _, seq, event in self._retry_heap]
            heapq.heapify(self._retry_heap)
            self._wake_timer()
        if self._space is not None:
            self._space.set()
            self._space = None

    def _latest_start(self, now: float) -> float:
        """During shutdown: the last moment an attempt can start and still finish in time."""
        return max(now, self._close_deadline - self._timeout)

    def _closing_due(self, now: float, delay: float) -> float:
        """During shutdown: when a retry asked for `now + delay` should happen instead.

        The backoff is shortened so that a last attempt fits before the deadline; when the
        deadline is too near for a whole request anyway, the backoff is kept (only capped
        at the deadline), so a fast-failing endpoint is not hammered while we close.
        """
        latest = self._close_deadline - self._timeout
        if latest > now:
            return min(now + delay, latest)
        return min(now + delay, self._close_deadline)

    async def _stop_runner(self, timeout: float) -> tuple[int, int]:
        """Cancel the worker; keep what it had not delivered in the spool, or drop it.

        Returns how many events were dropped, and how many the spool holds.
        """
        assert self._runner_scope is not None
        assert self._runner_done is not None
        self._runner_scope.cancel()
        with anyio.move_on_after(TRANSPORT_CLOSE_TIMEOUT):
            await self._runner_done.wait()
        # Events other threads handed over that the loop has not taken yet: dropped now,
        # counted and reported, rather than left to a callback that may never run.
        self._take_handed_over()
        queued = dict.fromkeys(event for event in self._queued if event._state == QUEUED)
        left = [*self._in_flight, *queued]
        self._in_flight.clear()
        self._queued.clear()
        self._queued_count = 0
        self._queued_bytes = 0
        self._retry_heap.clear()
        self._incoming.clear()
        self._ready.clear()
        held = 0
        lost = left
        if self._spooler is not None:
            spilled = list(self._spooler.spilled.values())
            self._spooler.spilled.clear()
            self._spilled_count = 0
            held, lost = await self._spooler.close(left + spilled)
            kept = {event.message_id for event in left + spilled} - {e.message_id for e in lost}
            for event in left + spilled:
                if event.message_id in kept and event._waiter is not None:
                    event._waiter.error = DeliveryError(
                        "not delivered before shutdown; kept in the spool for the next start",
                        message_id=event.message_id,
                        attempts=event.attempts,
                        event=event,
                    )
                    event._waiter.done.set()
        for event in lost:
            self._drop(event, DropReason.SHUTDOWN)
        if lost:
            logger.warning(
                "the shutdown timeout (%gs) ran out: %d undelivered event(s) dropped",
                timeout,
                len(lost),
            )
        return len(lost), held

    async def _close_transport(self, transport: httpx.AsyncBaseTransport) -> None:
        with anyio.move_on_after(TRANSPORT_CLOSE_TIMEOUT):
            try:
                await transport.aclose()
            except Exception:
                logger.warning("closing the HTTP transport failed", exc_info=True)

    async def _wait_for_enqueued(self, timeout: float) -> FlushResult:
        outstanding = self._queued_count + len(self._in_flight) + self._spilled_count
        if outstanding == 0:
            return FlushResult()
        waiter = _FlushWaiter(next(sequence), outstanding)
        self._flush_waiters.append(waiter)
        try:
            with anyio.move_on_after(timeout):
                await waiter.done.wait()
        finally:
            self._flush_waiters.remove(waiter)
        return waiter.result()

    def _after_fork_in_child(self) -> None:  # pragma: no cover - runs in forked children
        # The parent's loop, sockets and queue are not ours: start clean, lazily.
        if self._state is ClientState.CLOSED:
            return
        self._state = ClientState.UNOPENED
        self._reset()

    # -- delivery ----------------------------------------------------------------------------

    def _make_sender(self, transport: httpx.AsyncBaseTransport) -> Sender:
        return Sender(transport, self._url, self._write_key, self._timeout)

    def _worker_sender(self) -> Sender:
        if self._shared_sender is not None:
            return self._shared_sender
        transport: httpx.AsyncBaseTransport
        assert self._binding is not None
        if self._binding.backend == "asyncio" and not httpx_is_mocked():
            transport = Http11Transport(self._url, self._ssl_context, self._timeout)
        else:
            transport = httpx.AsyncHTTPTransport(
                verify=self._ssl_context or True,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            )
        self._transports.append(transport)
        return self._make_sender(transport)

    async def _worker(self) -> None:
        sender = self._worker_sender()
        ready = self._ready
        while True:
            if self._incoming:
                self._admit_incoming()
            if not ready:
                wakeup = anyio.Event()
                self._idle_workers.append(wakeup)
                await wakeup.wait()
                continue
            event = ready.popleft()
            try:
                await self._deliver(event, sender)
            except Exception:  # pragma: no cover - a bug; the worker must survive it
                logger.exception("delivery of message %s crashed", event.message_id)
                if event._state == IN_FLIGHT:
                    self._in_flight.discard(event)
                    self._finish_failed(event, Attempt(Outcome.FAILED, reason="internal error"))

    async def _deliver(self, event: Event, sender: Sender) -> None:
        if event._state == DROPPED:
            self._release(event)
            return
        if self._paused_until > anyio.current_time():
            await self._wait_out_pause()
            if event._state == DROPPED:
                self._release(event)
                return
        self._unqueue(event)
        event._state = IN_FLIGHT
        self._in_flight.add(event)
        now = anyio.current_time()
        if event.attempts == 0:
            event._deadline = now + self._policy.max_retry_time
        else:
            self._retried += 1
        event.attempts += 1
        attempt = await sender.send(event)
        self._in_flight.discard(event)
        if attempt.outcome is Outcome.DELIVERED:
            if self._failing_since is not None:
                self._endpoint_recovered()
            self._finish(event, DELIVERED)
            self._release(event)
        elif attempt.outcome is Outcome.RETRY:
            if self._spooler is not None:
                self._endpoint_failing()
            self._schedule_retry(event, attempt)
        else:
            self._finish_failed(event, attempt)

    def _endpoint_failing(self) -> None:
        """Track how long the endpoint has failed; past spool_after, spill to the spool."""
        now = anyio.current_time()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since >= self._spool_after and self._spooler is not None:
            self._spooler.set_outage(True)

    def _endpoint_recovered(self) -> None:
        self._failing_since = None
        if self._spooler is not None:
            self._spooler.set_outage(False)

    def _schedule_retry(self, event: Event, attempt: Attempt) -> None:
        now = anyio.current_time()
        delay = self._policy.next_delay(event, now, attempt.retry_after)
        if isinstance(delay, str):
            if not self._can_spill():
                attempt.reason = f"{attempt.reason}; {delay}" if attempt.reason else delay
                self._finish_failed(event, attempt)
                return
            # With a spool, a retryable failure is never given up on: the event keeps its
            # person's place and waits for the endpoint (and for the next start, in the
            # spool, if the app stops first). Only Encharge's refusals fail it.
            delay = self._policy.backoff(event, attempt.retry_after)
        if attempt.status == 429 or (attempt.status == 503 and attempt.retry_after is not None):
            # The server asked everyone to slow down: pause all senders, not only this one.
            self._paused_until = max(self._paused_until, now + delay)
        due = now + delay
        if self._state is not _OPEN:
            due = self._closing_due(now, delay)
        logger.debug(
            "message %s: attempt %d failed (%s), retrying in %.2fs",
            event.message_id,
            event.attempts,
            attempt.reason,
            due - now,
            extra={
                "message_id": event.message_id,
                "status": attempt.status,
                "attempt": event.attempts,
            },
        )
        event._state = QUEUED
        self._queued.appendleft(event)  # the oldest: first to go under drop_oldest
        self._queued_count += 1
        self._queued_bytes += len(event.body)
        heap = self._retry_heap
        heapq.heappush(heap, (due, event.seq, event))
        if heap[0][2] is event:
            self._wake_timer()

    async def _wait_out_pause(self) -> None:
        """Sleep until the server's Retry-After pause ends (cut short during shutdown)."""
        assert self._closing is not None
        while True:
            now = anyio.current_time()
            until = self._paused_until
            if self._state is not _OPEN:
                until = min(until, self._latest_start(now))
            if until <= now:
                return
            with anyio.move_on_after(until - now):
                if self._state is _OPEN:
                    await self._closing.wait()
                else:
                    await anyio.sleep(until - now)

    async def _timer(self) -> None:
        """Moves parked retries back to the ready queue when they fall due."""
        while True:
            now = anyio.current_time()
            heap = self._retry_heap
            while heap and heap[0][0] <= now:
                event = heapq.heappop(heap)[2]
                self._make_ready(event)
            self._timer_wakeup = anyio.Event()
            if heap:
                with anyio.move_on_after(heap[0][0] - now):
                    await self._timer_wakeup.wait()
            else:
                await self._timer_wakeup.wait()

    def _wake_timer(self) -> None:
        if self._timer_wakeup is not None:
            self._timer_wakeup.set()

    # -- bookkeeping -------------------------------------------------------------------------

    def _unqueue(self, event: Event) -> None:
        """Take a queued event out of the queue's count (before it changes state)."""
        self._queued_count -= 1
        self._queued_bytes -= len(event.body)
        queued = self._queued
        if queued[0] is event:  # mostly: events leave in the order they came
            queued.popleft()
            while queued and queued[0]._state != QUEUED:
                queued.popleft()
        elif len(queued) > 2 * self._queued_count + QUEUE_PRUNE_SLACK:
            # Entries of events that left behind a head that stays (a retry, a person's
            # earlier event): prune them, amortised O(1), so the deque stays O(queued).
            self._queued = deque(
                dict.fromkeys(e for e in queued if e._state == QUEUED and e is not event)
            )
        if self._space is not None:
            self._space.set()
            self._space = None

    def _make_ready(self, event: Event) -> None:
        """Hand an event that heads all its lanes to the workers (a dropped one just leaves)."""
        if event._state == DROPPED:
            self._release(event)
        else:
            self._push_ready(event)

    def _push_ready(self, event: Event) -> None:
        self._ready.append(event)
        if self._idle_workers:
            self._idle_workers.popleft().set()

    def _release(self, event: Event) -> None:
        """Take a finished event out of the ordering, letting its successors go."""
        pending = [event]
        while pending:
            for unblocked in self._lanes.release(pending.pop()):
                if unblocked._state == DROPPED:
                    pending.append(unblocked)
                else:
                    self._push_ready(unblocked)

    def _finish(self, event: Event, state: int) -> None:
        event._state = state
        if self._spooler is not None and getattr(event, "_spooled", False):
            self._spooler.finished(event, state)
        if state == DELIVERED:
            self._delivered += 1
        elif state == FAILED:
            self._failed += 1
        else:
            self._dropped += 1
        if event._waiter is not None:
            event._waiter.done.set()
        if self._flush_waiters:
            for waiter in self._flush_waiters:
                if event.seq < waiter.target:
                    waiter.record(state)
        if state == DELIVERED:
            if self._delivery_listeners:
                elapsed = anyio.current_time() - (event._deadline - self._policy.max_retry_time)
                for listener in self._delivery_listeners:
                    self._call_hook("delivery listener", listener, event, elapsed)
            if self._on_delivered is not None:
                self._call_hook("on_delivered", self._on_delivered, event)

    def _finish_failed(self, event: Event, attempt: Attempt) -> None:
        error = DeliveryError(
            attempt.reason,
            message_id=event.message_id,
            status=attempt.status,
            body=attempt.body,
            attempts=event.attempts,
            event=event,
        )
        if event._waiter is not None:
            event._waiter.error = error
        self._finish(event, FAILED)
        self._release(event)
        logger.warning(
            "%s",
            error,
            extra={
                "message_id": event.message_id,
                "status": attempt.status,
                "attempt": event.attempts,
            },
        )
        if self._on_error is not None:
            self._call_hook("on_error", self._on_error, error)

    def _drop(self, event: Event, reason: DropReason) -> None:
        """Count and report a dropped event (the caller has already unqueued it)."""
        if event.seq and event._waiter is not None:
            event._waiter.error = DeliveryError(
                f"dropped ({reason.value})",
                message_id=event.message_id,
                attempts=event.attempts,
                event=event,
            )
        if event.seq:
            self._finish(event, DROPPED)
        else:
            # Never accepted (the newest, refused at the door): counted, not flushed.
            event._state = DROPPED
            self._dropped += 1
        self._warn_drops(reason)
        if self._on_drop is not None:
            self._call_hook("on_drop", self._on_drop, event, reason)

    def _warn_drops(self, reason: DropReason) -> None:
        """One warning per DROP_WARNING_INTERVAL, however many events are dropped."""
        self._drops_unreported += 1
        now = time.monotonic()
        if now - self._last_drop_warning >= DROP_WARNING_INTERVAL:
            logger.warning(
                "dropped %d event(s) (latest reason: %s); see stats.dropped and on_drop",
                self._drops_unreported,
                reason.value,
            )
            self._drops_unreported = 0
            self._last_drop_warning = now

    def _call_hook(self, name: str, hook: Any, *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            logger.exception("%s hook raised; the event is unaffected", name)


def _reset_clients_after_fork() -> None:  # pragma: no cover - runs in forked children
    for client in list(_live_clients):
        client._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent only on Windows
    os.register_at_fork(after_in_child=_reset_clients_after_fork)
