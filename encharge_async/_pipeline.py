"""The delivery pipeline of one client, wired: intake -> queue -> dispatcher -> ledger.

    caller ──► Intake ──► DeliveryQueue ──► Dispatcher (workers, Sender) ──► Ledger
                 │  ▲            ▲   │              │                          │
                 ▼  │            │   └── Scheduler ◄┘ (retries, pause,         ├─► hooks, log
              Spooler (spool=)   └──── deadline)                               └─► flush()

Each object owns its state; this module creates them, connects their narrow interfaces,
and runs their tasks under one runner task (spawned on the client's loop, owned by no
caller, so no caller's cancel scope spans it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import anyio

from ._builders import check_timeout
from ._config import Config
from ._constants import ADAPTIVE_INITIAL_LIMIT, DEFAULT_BLOCK_TIMEOUT, TRANSPORT_CLOSE_TIMEOUT
from ._dispatcher import Dispatcher
from ._events import FILTERED, Entry, Waiter
from ._exceptions import ConfigurationError, DeliveryError
from ._intake import DisabledIntake, Intake, ShapedIntake
from ._ledger import Ledger
from ._queue import DeliveryQueue
from ._retry import RetryPolicy, default_wait
from ._runtime import LoopBinding
from ._scheduler import Scheduler
from ._spool import SpoolLimits
from ._spooler import Spooler
from ._stats import FlushResult, Stats
from ._types import DropReason

__all__ = ["Pipeline"]

logger = logging.getLogger("encharge_async")


class Pipeline:
    """The queue, workers, timer and spool of one client, and their runner."""

    def __init__(self, config: Config, enter: Callable[[], LoopBinding]) -> None:
        self._config = config
        self.ledger = Ledger(
            on_delivered=config.on_delivered, on_error=config.on_error, on_drop=config.on_drop
        )
        self.queue = DeliveryQueue(
            self.ledger,
            max_size=config.max_queue_size,
            max_bytes=config.max_queue_bytes,
            overflow=config.overflow,
        )
        self.scheduler = Scheduler(self.queue, timeout=config.timeout)
        self.policy = RetryPolicy(
            wait=config.retry_wait if config.retry_wait is not None else default_wait(),
            max_retries=config.max_retries,
            max_retry_time=config.max_retry_time,
        )
        self.dispatcher = Dispatcher(config, self.queue, self.scheduler, self.ledger, self.policy)
        door = DisabledIntake if config.disabled else ShapedIntake if config.before_send else Intake
        self.intake = door(self.queue, self.ledger, overflow=config.overflow, enter=enter)
        if config.disabled:
            self.intake.accepting = True  # until closed; it never starts anything
        self.spooler: Spooler | None = None
        self._failing_since: float | None = None
        # Why the runner stopped on its own (a broken configuration, a bug), if it did.
        self.failure: Exception | None = None
        self._binding: LoopBinding | None = None
        self._runner_scope: anyio.CancelScope | None = None
        self._runner_done: anyio.Event | None = None

    @property
    def binding(self) -> LoopBinding | None:
        return self._binding

    @property
    def ended(self) -> bool:
        """Whether the runner has ended on its own (its loop ended, or it failed)."""
        return self._runner_done is not None and self._runner_done.is_set()

    # -- start --------------------------------------------------------------------------------

    def start(self, binding: LoopBinding) -> None:
        """Bind to the running loop and spawn the runner."""
        self._binding = binding
        self._runner_scope = anyio.CancelScope()
        self._runner_done = anyio.Event()
        self.scheduler.start()
        config = self._config
        if config.spool is not None:
            spooler = self.spooler = Spooler(
                config.spool,
                queue=self.queue,
                ledger=self.ledger,
                always=config.spool_mode == "always",
                limits=SpoolLimits(max_bytes=config.spool_max_bytes, max_age=config.spool_max_age),
                max_queue_size=config.max_queue_size,
                # Twice what the concurrency limit starts at.
                outage_in_memory=2 * min(config.max_concurrency, ADAPTIVE_INITIAL_LIMIT),
                on_divert_change=self._divert_changed,
            )
            self.ledger.spool_listener = spooler.finished
            self.queue.overflow_to = spooler.take_overflow
            self.intake.can_spill = lambda: spooler.usable
            self.dispatcher.keep_trying = lambda: spooler.usable
            self.dispatcher.on_failure = self._endpoint_failing
            self.dispatcher.on_success = self._endpoint_recovered
            self._divert_changed()
        self.intake.open(binding, threading.get_ident())
        binding.spawn(self._run)

    async def open(self) -> Exception | None:
        """Set up TLS and open the spool now (from `__aenter__`), so that their errors reach
        the caller; the error, if the client cannot work."""
        assert self._binding is not None
        try:
            await self.dispatcher.prepare(self._binding)
        except ConfigurationError as exc:
            return exc
        if self.spooler is None or await self.spooler.open():
            return None
        return self.spooler.open_error

    def _divert_changed(self) -> None:
        spooler = self.spooler
        self.intake.divert = spooler.take if spooler is not None and spooler.diverting else None

    def _endpoint_failing(self, now: float) -> None:
        """Past `spool_after` seconds of failures, new events spill to the spool."""
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since >= self._config.spool_after and self.spooler is not None:
            self.spooler.set_outage(True)

    def _endpoint_recovered(self, now: float) -> None:
        if self._failing_since is not None:
            self._failing_since = None
            if self.spooler is not None:
                self.spooler.set_outage(False)

    async def _run(self) -> None:
        assert self._runner_scope is not None
        assert self._runner_done is not None
        assert self._binding is not None
        try:
            with self._runner_scope:
                await self.dispatcher.prepare(self._binding)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self.dispatcher.run)
                    tg.start_soon(self.scheduler.run)
                    if self.spooler is not None:
                        tg.start_soon(self.spooler.run)
        except anyio.get_cancelled_exc_class():
            if not self.scheduler.closing:
                # Cancelled from outside, not by aclose(): the event loop is ending
                # (asyncio.run() returning) with the client still open.
                with anyio.CancelScope(shield=True):
                    await self._drain_unclosed()
            raise
        except Exception as exc:
            # Never silent: say so, fail what is queued (on_error), and refuse new events.
            self._stopped(exc)
        finally:
            self.intake.close()
            self._runner_done.set()

    async def _drain_unclosed(self) -> None:
        """The loop is ending under an open client: deliver what is queued within
        `shutdown_timeout` on the way out, then keep or drop (NOT_CLOSED) the rest."""
        self.intake.close()
        if not self.outstanding():
            return
        bound = self._config.shutdown_timeout
        logger.warning(
            "the event loop is ending but the client was never closed: delivering %d queued "
            "event(s) within shutdown_timeout=%gs; close it in the app's shutdown (async with "
            "AsyncEncharge(...), or await client.aclose())",
            self.outstanding(),
            bound,
        )
        self.begin_closing(bound)
        with anyio.move_on_after(bound):
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.dispatcher.run)
                tg.start_soon(self.scheduler.run)
                await self.flush(bound)
                tg.cancel_scope.cancel()
        _, dropped = await self._settle(DropReason.NOT_CLOSED)
        if dropped:
            logger.warning(
                "%d event(s) dropped: the client was never closed and its event loop ended "
                "before they could be delivered (see on_drop, DropReason.NOT_CLOSED)",
                dropped,
            )

    def _stopped(self, exc: Exception) -> None:
        self.failure = exc
        self.intake.close()
        logger.error(
            "the client stopped delivering events: %s",
            exc,
            exc_info=not isinstance(exc, ConfigurationError),
        )
        left = self.queue.take_all()
        self.scheduler.clear()
        for entry in left:
            error = DeliveryError(
                f"not delivered: the client stopped ({type(exc).__name__}: {exc})"[:500],
                message_id=entry.message_id,
                attempts=entry.attempts,
                event=entry,
            )
            self.ledger.record_failed(entry, error)

    # -- state --------------------------------------------------------------------------------

    def stats(self) -> Stats:
        """The counters, true when read from any thread: events other threads handed over
        count as enqueued and queued as soon as their call returned. Events an earlier
        process left in the spool count as enqueued (and spooled) from the spool's opening;
        the queue numbers them as they are read back."""
        ledger = self.ledger
        queue = self.queue
        spooler = self.spooler
        handed_over = self.intake.handed_over
        unnumbered = spooler.unnumbered if spooler is not None else 0
        return Stats(
            enqueued=queue.accepted + handed_over + unnumbered,
            delivered=ledger.delivered,
            failed=ledger.failed,
            dropped=ledger.dropped,
            retried=ledger.retried,
            queued=queue.count + handed_over,
            in_flight=len(queue.in_flight),
            queued_bytes=queue.bytes,
            spooled=spooler.spooled if spooler is not None else 0,
            filtered=ledger.filtered,
            last_error=ledger.last_error,
            failing_since=ledger.failing_since,
            concurrency_limit=0 if self._config.disabled else self.dispatcher.limiter.limit,
        )

    def outstanding(self) -> int:
        spilled = self.spooler.spilled_count if self.spooler is not None else 0
        return self.queue.count + len(self.queue.in_flight) + spilled

    async def flush(self, timeout: float) -> FlushResult:
        """Wait for the events accepted so far (see `AsyncEncharge.flush`), those other
        threads have handed over and the loop has not taken yet included."""
        self.intake.take_handed_over()
        earlier = self.spooler.leftover if self.spooler is not None else 0
        return await self.ledger.wait_for(
            self.queue.accepted, self.outstanding(), timeout, earlier=earlier
        )

    async def submit(self, entry: Entry, wait: bool, timeout: float | None) -> str:
        """The intake's waiting door, on the client's loop: room (`overflow="block"`), the
        disk (`spool_mode="always"`) and, with `wait`, the event's outcome.

        Raises:
            ValidationError: `timeout` is not a number of seconds >= 0.
            QueueFullError: no room within the bound.
            DeliveryError: with `wait`, the event failed or was dropped.
            TimeoutError: with `wait`, no outcome within the bound; in always mode, the
                disk did not take the event in time.
        """
        check_timeout(timeout)
        config = self._config
        if entry.state == FILTERED:  # before_send said no: counted, never queued
            self.intake.put_nowait(entry)
            return entry.message_id
        if wait:
            entry.waiter = Waiter(anyio.Event())
        bound = DEFAULT_BLOCK_TIMEOUT if timeout is None else timeout
        if config.overflow == "block":
            await self.intake.put(entry, bound)
        else:
            self.intake.put_nowait(entry)
        if self.spooler is not None and entry.spooled and config.spool_always:
            # Durable before returning: wait for the writer's commit of this event's batch.
            with anyio.move_on_after(bound) as scope:
                await self.spooler.commit_of(entry).wait()
            if scope.cancelled_caught:
                raise TimeoutError(
                    f"event {entry.message_id} was not on disk within {bound:g}s (it stays queued)"
                )
        if entry.waiter is not None:
            bound = config.wait_bound if timeout is None else timeout
            with anyio.move_on_after(bound) as scope:
                await entry.waiter.done.wait()
            if scope.cancelled_caught:
                raise TimeoutError(
                    f"no outcome for event {entry.message_id} within {bound:g}s (it stays "
                    "queued; on_delivered / on_error report it)"
                )
            if entry.waiter.error is not None:
                raise entry.waiter.error
        return entry.message_id

    # -- close --------------------------------------------------------------------------------

    def begin_closing(self, timeout: float) -> None:
        self.intake.close()
        now = anyio.current_time()
        self.scheduler.begin_closing(now, now + timeout)
        self.queue.wake_waiters_for_room()

    async def stop(self, timeout: float) -> int:
        """Cancel the runner; keep what it had not delivered in the spool, or drop it.

        Returns how many events the spool holds.
        """
        assert self._runner_scope is not None
        assert self._runner_done is not None
        self._runner_scope.cancel()
        with anyio.move_on_after(TRANSPORT_CLOSE_TIMEOUT):
            await self._runner_done.wait()
        # Events other threads handed over that the loop has not taken yet: dropped now,
        # counted and reported, rather than left to a callback that may never run.
        self.intake.take_handed_over()
        held, dropped = await self._settle(DropReason.SHUTDOWN)
        if dropped:
            logger.warning(
                "the shutdown timeout (%gs) ran out: %d undelivered event(s) dropped "
                "(see on_drop; a spool= keeps them for the next start)",
                timeout,
                dropped,
            )
        return held

    async def _settle(self, reason: DropReason) -> tuple[int, int]:
        """The runner has stopped: keep what is left in the spool, or drop it with `reason`
        (logged by the caller); close the connections. Returns (held, dropped)."""
        left = self.queue.take_all()
        self.scheduler.clear()
        held, lost = (0, left) if self.spooler is None else await self.spooler.close(left)
        for entry in lost:
            self.ledger.record_dropped(entry, reason, logged=True)
        await self.dispatcher.aclose()
        self.ledger.report_pending()
        return held, len(lost)
