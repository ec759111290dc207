"""Would a lean transport on trio pay off? CPU per request of four ways to send one.

The default transport on asyncio is an `asyncio.Protocol`; trio has no protocols, so a lean
path there would go through anyio streams: one `send` of the whole request, `receive` and
llhttp until the response is complete, under a cancel scope for the timeout. This measures
that path on asyncio and on trio against the asyncio transport and against what trio uses
today (httpx's `AsyncHTTPTransport`). Each of 64 workers owns one keep-alive connection to
the loopback sink (another process); the figure is this process's CPU per request, after a
warm-up. The client's own work per event (queue, sender) is not included.

Run: `python -m benchmarks.lean_trio [--requests N] [--repeats R]`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Protocol

import anyio
import anyio.abc
import httptools
import httpx

from encharge_async._http11 import Http11Transport, RawResponse

from ._common import loopback_only
from ._proc import ServerProcess

WORKERS = 64
BODY = b'{"type":"track","name":"Signed up","userId":"u1"}'
REQUEST = (
    b"POST /v1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"X-Encharge-Token: k\r\nIdempotency-Key: 0123456789abcdef\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class Sender(Protocol):
    async def request(self, data: bytes) -> RawResponse: ...
    async def aclose(self) -> None: ...


class _Response:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


class LeanStreams:
    """The lean path over anyio streams (what a trio transport would be)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stream: anyio.abc.SocketStream | None = None

    async def request(self, data: bytes) -> RawResponse:
        with anyio.fail_after(10):
            if self.stream is None:
                self.stream = await anyio.connect_tcp(self.host, self.port)
            await self.stream.send(data)
            response = _Response()
            parser = httptools.HttpResponseParser(response)
            while not response.done:
                parser.feed_data(await self.stream.receive(65536))
            return parser.get_status_code(), response.headers, bytes(response.body)

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


class HttpxTransport:
    """What trio uses today: httpx's transport, one connection per worker."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))

    async def request(self, data: bytes) -> RawResponse:
        request = httpx.Request("POST", self.url, content=BODY)
        with anyio.fail_after(10):
            response = await self.transport.handle_async_request(request)
            body = await response.aread()
        return response.status_code, list(response.headers.raw), body

    async def aclose(self) -> None:
        await self.transport.aclose()


async def cpu_per_request(make: Callable[[], Sender], requests: int) -> float:
    """Microseconds of this process's CPU per request, after a warm-up of a tenth."""
    senders = [make() for _ in range(WORKERS)]

    async def worker(sender: Sender, count: int) -> None:
        for _ in range(count):
            status, _, _ = await sender.request(REQUEST)
            if status != 200:
                raise RuntimeError(f"the sink answered {status}")

    each = max(requests // WORKERS, 1)
    async with anyio.create_task_group() as tg:
        for sender in senders:
            tg.start_soon(worker, sender, max(each // 10, 1))
    start = time.process_time()
    async with anyio.create_task_group() as tg:
        for sender in senders:
            tg.start_soon(worker, sender, each)
    used = time.process_time() - start
    for sender in senders:
        await sender.aclose()
    return used / (each * WORKERS) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    loopback_only()
    with ServerProcess("sink") as sink:
        url = httpx.URL(sink.url)
        host, port = url.host, url.port or 80
        variants: list[tuple[str, str, Callable[[], Sender]]] = [
            ("asyncio: Http11Transport (Protocol)", "asyncio", lambda: Http11Transport(url)),
            ("asyncio: anyio streams + llhttp", "asyncio", lambda: LeanStreams(host, port)),
            ("trio: anyio streams + llhttp", "trio", lambda: LeanStreams(host, port)),
            ("trio: httpx AsyncHTTPTransport", "trio", lambda: HttpxTransport(str(url))),
        ]
        for name, backend, make in variants:
            runs = sorted(
                anyio.run(cpu_per_request, make, args.requests, backend=backend)
                for _ in range(args.repeats)
            )
            median = runs[len(runs) // 2]
            print(f"{name:38s} {median:7.1f} us CPU/request ({runs[0]:.1f}-{runs[-1]:.1f})")


if __name__ == "__main__":
    main()
