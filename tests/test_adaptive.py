"""Adaptive concurrency end to end: the emulator and a connection-counting server, over
real sockets, through the public API (figures such as throughput are the benchmarks')."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import pytest

from encharge_async import AsyncEncharge
from encharge_async._constants import ADAPTIVE_INITIAL_LIMIT, DEFAULT_MAX_CONCURRENCY
from encharge_async.emulator import Emulator

from .conftest import WRITE_KEY, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the emulator and the counting server run on asyncio


@pytest.mark.slow
async def test_the_limit_starts_at_its_initial_value_and_is_in_stats() -> None:
    async with Emulator(write_key=WRITE_KEY) as emulator:
        async with AsyncEncharge(WRITE_KEY, endpoint=emulator.url) as client:
            assert client.stats.concurrency_limit == ADAPTIVE_INITIAL_LIMIT
        async with AsyncEncharge(WRITE_KEY, endpoint=emulator.url, max_concurrency=3) as client:
            assert client.stats.concurrency_limit == 3  # never above the ceiling
    assert AsyncEncharge(WRITE_KEY, disabled=True).stats.concurrency_limit == 0


@pytest.mark.slow
async def test_the_limit_grows_beyond_its_start_with_a_slow_endpoint() -> None:
    events = 600
    async with Emulator(write_key=WRITE_KEY, latency=0.1) as emulator:
        async with AsyncEncharge(WRITE_KEY, endpoint=emulator.url, max_queue_size=events) as client:
            ids = [client.track_nowait("Signed up", user_id=i) for i in range(events)]
            await wait_until(lambda: client.stats.in_flight > ADAPTIVE_INITIAL_LIMIT, 20)
            assert (await client.flush(timeout=60)).complete
            stats = client.stats
        assert stats.delivered == events
        limit = stats.concurrency_limit
        assert ADAPTIVE_INITIAL_LIMIT < limit <= DEFAULT_MAX_CONCURRENCY
        assert sorted(str(e.idempotency_key) for e in emulator.events) == sorted(ids)


@pytest.mark.slow
@pytest.mark.parametrize("retry_after", [None, 0])
async def test_a_server_that_refuses_above_24_in_flight_loses_nothing(
    retry_after: int | None,
) -> None:
    """The server's cap: 429 beyond 24 requests in hand. The client's limit backs off
    below it: few requests are refused, every event is delivered once."""
    events = 500
    async with Emulator(
        write_key=WRITE_KEY,
        latency=0.02,
        max_in_flight=24,
        max_in_flight_retry_after=retry_after,
    ) as emulator:
        async with AsyncEncharge(WRITE_KEY, endpoint=emulator.url, max_queue_size=events) as client:
            ids = [client.track_nowait("Signed up", user_id=i) for i in range(events)]
            assert (await client.flush(timeout=120)).complete
            stats = client.stats
        refused = emulator.fault_counts["concurrency_limit_exceeded"]
        assert refused > 0  # the limit did go past the cap (slow start), and backed off
        assert (stats.delivered, stats.failed, stats.dropped) == (events, 0, 0)
        assert sorted(str(e.idempotency_key) for e in emulator.events) == sorted(ids)
        assert refused == stats.retried  # every failed request was a refusal, retried
        assert refused < (events + refused) / 4


class _Counting(asyncio.Protocol):
    """A keep-alive HTTP/1.1 server that answers 200 to each request (one per packet)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        # The client's requests are small: each arrives whole, head and body together.
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")


@pytest.fixture
async def counting_server() -> AsyncIterator[tuple[str, list[_Counting]]]:
    opened: list[_Counting] = []

    def accept() -> _Counting:
        protocol = _Counting()
        opened.append(protocol)
        return protocol

    server = await asyncio.get_running_loop().create_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/", opened
    finally:
        server.close()
        for protocol in opened:
            protocol.transport.abort()
        await server.wait_closed()


@pytest.mark.slow
async def test_ten_events_a_second_open_at_most_three_connections(
    counting_server: tuple[str, list[_Counting]],
) -> None:
    url, opened = counting_server
    async with AsyncEncharge(WRITE_KEY, endpoint=url) as client:
        for i in range(20):
            client.track_nowait("Viewed page", user_id=i)
            await anyio.sleep(0.1)  # the rate is what is tested: 10 events/s
        assert (await client.flush(timeout=10)).complete
        assert client.stats.delivered == 20
    assert 1 <= len(opened) <= 3
