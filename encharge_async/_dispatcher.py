"""The workers: take ready events from the queue, send each once, and route what came of it.

There are `max_concurrency` workers (the ceiling); each holds a slot of the concurrency
limiter while it sends, so that the requests in flight follow the limiter's adaptive limit.
Each worker owns a sender (and, with the default transport, one keep-alive connection of
its own: httpcore's shared pool costs CPU per request that grows with the number of
connections). Delivered and failed-for-good events go to the ledger; retryable failures go
to the scheduler, as `RetryPolicy.decide` says.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable

import anyio
import httpx

from ._config import Config
from ._constants import TRANSPORT_CLOSE_TIMEOUT
from ._events import DROPPED, IN_FLIGHT, Entry
from ._exceptions import ConfigurationError, DeliveryError
from ._http11 import (
    Http11Transport,
    create_tls_context,
    httpx_is_mocked,
    proxy_from_environment,
)
from ._ledger import Ledger
from ._limiter import ConcurrencyLimiter, Signal
from ._queue import DeliveryQueue
from ._retry import Attempt, Failure, GiveUp, RetryPolicy
from ._runtime import LoopBinding
from ._scheduler import Scheduler
from ._sender import Sender

__all__ = ["Dispatcher"]

logger = logging.getLogger("encharge_async")


# No request was made (the event was dropped meanwhile, or delivery crashed).
_NOTHING = (Signal.NONE, 0.0, 0.0)


def _never() -> bool:
    return False


async def _load_tls_context(
    verify: bool | str | os.PathLike[str] | ssl.SSLContext,
) -> ssl.SSLContext:
    """Load the CA bundle (~20 ms) in a thread, off the event loop, when threads may start.

    At interpreter exit (an atexit flush) Python refuses new threads: load it inline then.

    Raises:
        ConfigurationError: the CA bundle cannot be loaded (naming where it was looked for).
    """
    try:
        return await anyio.to_thread.run_sync(create_tls_context, verify)
    except RuntimeError as exc:
        if isinstance(exc, ConfigurationError):  # pragma: no cover - not a RuntimeError
            raise
        return create_tls_context(verify)


class Dispatcher:
    """`max_concurrency` workers over one sender path, gated by the concurrency limiter."""

    def __init__(
        self,
        config: Config,
        queue: DeliveryQueue,
        scheduler: Scheduler,
        ledger: Ledger,
        policy: RetryPolicy,
    ) -> None:
        self._config = config
        self._queue = queue
        self._scheduler = scheduler
        self._ledger = ledger
        self._policy = policy
        self.limiter = ConcurrencyLimiter(config.max_concurrency)
        self._transports: list[httpx.AsyncBaseTransport] = []
        self._ssl_context: ssl.SSLContext | None = None
        self._proxy: httpx.URL | None = None
        self._prepared = False
        self._backend = "asyncio"
        self._clock: Callable[[], float] = anyio.current_time
        # Set by the spool bridge: is there somewhere to keep events that keep failing, and
        # the endpoint's health (it spills to disk during an outage).
        self.keep_trying: Callable[[], bool] = _never
        self.on_failure: Callable[[float], None] | None = None
        self.on_success: Callable[[float], None] | None = None

    @property
    def transports(self) -> tuple[httpx.AsyncBaseTransport, ...]:
        """The transports the workers send through (the user's one, or one per worker)."""
        return tuple(self._transports)

    async def prepare(self, binding: LoopBinding) -> None:
        """Get ready to send on the bound loop: its clock, the TLS context and the proxy
        (once).

        Raises:
            ConfigurationError: the CA bundle cannot be loaded.
        """
        if self._prepared:
            return
        self._backend = binding.backend
        self._clock = binding.clock
        config = self._config
        if config.transport is None:
            self._ssl_context = await _load_tls_context(config.verify)
            self._proxy = config.proxy or (
                proxy_from_environment(config.url) if config.trust_env else None
            )
        self._prepared = True

    async def run(self) -> None:
        """Run the workers until cancelled."""
        self.limiter.reset()
        async with anyio.create_task_group() as tg:
            for _ in range(self._config.max_concurrency):
                tg.start_soon(self._worker, self._sender())

    async def aclose(self) -> None:
        """Close every transport (the user's included), each within a bound."""
        transports = self._transports or (
            [self._config.transport] if self._config.transport is not None else []
        )
        for transport in transports:
            with anyio.move_on_after(TRANSPORT_CLOSE_TIMEOUT):
                try:
                    await transport.aclose()
                except Exception:
                    logger.warning("closing the HTTP transport failed", exc_info=True)

    def _sender(self) -> Sender:
        config = self._config
        transport = config.transport
        if transport is not None:
            if not self._transports:
                self._transports.append(transport)
        elif (
            self._backend == "asyncio"
            and not httpx_is_mocked()
            and (self._proxy is None or self._proxy.scheme == "http")
        ):
            transport = Http11Transport(
                config.url, self._ssl_context, config.timeout, proxy=self._proxy
            )
            self._transports.append(transport)
        else:  # trio, a mocked httpx, or a proxy only httpx speaks (https://, socks5://)
            transport = httpx.AsyncHTTPTransport(
                verify=self._ssl_context or True,
                proxy=self._proxy,
                trust_env=False,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            )
            self._transports.append(transport)
        return Sender(transport, config.url, config.write_key, config.timeout)

    async def _worker(self, sender: Sender) -> None:
        queue = self._queue
        limiter = self.limiter
        while True:
            if not limiter.acquire():
                await limiter.wait()
                continue
            # Holding a slot: send one event after another while the limit allows it.
            while True:
                entry = queue.next_ready()
                if entry is None:
                    limiter.release()
                    await queue.wait_for_work()
                    break
                outcome = _NOTHING
                try:
                    outcome = await self._deliver(entry, sender)
                except Exception:  # a bug: the worker must survive it, and the event must end
                    logger.exception("delivery of message %s crashed", entry.message_id)
                    if entry.state == IN_FLIGHT:
                        queue.landed(entry)
                        self._fail(entry, Attempt(failure=Failure.BUG, reason="internal error"))
                if not limiter.done(*outcome):
                    break

    async def _deliver(self, entry: Entry, sender: Sender) -> tuple[Signal, float, float]:
        """Send `entry` once and route the outcome; for the limiter, what the answer says
        about load, when the request started and when it ended."""
        queue = self._queue
        if entry.state == DROPPED:
            queue.release(entry)
            return _NOTHING
        scheduler = self._scheduler
        clock = self._clock
        if scheduler.paused(clock()):
            await scheduler.wait_out_pause()
            if entry.state == DROPPED:
                queue.release(entry)
                return _NOTHING
        queue.start(entry)
        started = clock()
        if entry.begin_attempt(started, self._policy.max_retry_time):
            self._ledger.record_retry()
        attempt = await sender.send(entry)
        queue.landed(entry)
        now = clock()
        if attempt.delivered:
            if self.on_success is not None:
                self.on_success(now)
            self._ledger.record_delivered(entry, now)
            queue.release(entry)
            return Signal.OK, started, now
        self._ledger.attempt_failed(attempt.status, attempt.reason)
        verdict = self._policy.decide(entry, attempt, now, keep_trying=self.keep_trying())
        if isinstance(verdict, GiveUp):
            attempt.reason = verdict.reason
            self._fail(entry, attempt)
        else:
            if self.on_failure is not None:
                self.on_failure(now)
            scheduler.park(entry, verdict, attempt, now)
        return (Signal.OVERLOAD if attempt.overloaded else Signal.NONE), started, now

    def _fail(self, entry: Entry, attempt: Attempt) -> None:
        error = DeliveryError(
            attempt.reason,
            message_id=entry.message_id,
            status=attempt.status,
            body=attempt.body,
            attempts=entry.attempts,
            event=entry,
        )
        self._ledger.record_failed(entry, error)
        self._queue.release(entry)
