"""Loopback servers of the benchmarks, each run in a process of its own.

`python -m benchmarks.servers sink [--latency S]`: a minimal HTTP/1.1 sink (raw asyncio
protocol, keep-alive) that answers `200 {}` to every request, optionally after a delay.
`python -m benchmarks.servers emulator --latency S`: the project's Encharge emulator.
`python -m benchmarks.servers app --sink URL`: the FastAPI app of `benchmarks.app` under
uvicorn.

Each binds a free port on 127.0.0.1, prints `READY <url>` and serves until its stdin
closes or it receives SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
import threading
from collections.abc import AsyncIterator

from ._common import LOOPBACK, WRITE_KEY, loopback_only

_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 5.0


class SinkProtocol(asyncio.Protocol):
    """One connection of the sink: parses requests (Content-Length or chunked), answers 200."""

    def __init__(self, latency: float, connections: set[SinkProtocol]) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._latency = latency
        self._connections = connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._connections.discard(self)

    def abort(self) -> None:
        """Cut the connection (when the sink stops)."""
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            end = _request_end(buffer)
            if end < 0:
                return
            head = bytes(buffer[: buffer.find(b"\r\n\r\n")]).lower()
            del buffer[:end]
            close = b"\r\nconnection: close" in head
            if self._latency > 0:
                asyncio.get_running_loop().call_later(self._latency, self._answer, close)
            else:
                self._answer(close)

    def _answer(self, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(_RESPONSE)
        if close:
            transport.close()


def _request_end(buffer: bytearray) -> int:
    """Where the first complete request in `buffer` ends, or -1 if it is not complete yet."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return -1
    head = bytes(buffer[:head_end]).lower()
    position = head_end + 4
    if b"\r\ntransfer-encoding: chunked" in head:
        while True:  # chunks, then the last (empty) chunk; trailers are not supported
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return -1
            size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
            position = line_end + 2 + size + 2
            if position > len(buffer):
                return -1
            if size == 0:
                return position
    match = _CONTENT_LENGTH.search(head)
    end = position + (int(match.group(1)) if match else 0)
    return end if len(buffer) >= end else -1


@contextlib.asynccontextmanager
async def serve_sink(latency: float = 0.0) -> AsyncIterator[str]:
    """Serve the sink on a free loopback port; yield its URL (`http://127.0.0.1:PORT/v1/`)."""
    loop = asyncio.get_running_loop()
    connections: set[SinkProtocol] = set()
    server = await loop.create_server(
        lambda: SinkProtocol(latency, connections), LOOPBACK, 0, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{LOOPBACK}:{port}/v1/"
    finally:
        server.close()
        for connection in list(connections):
            connection.abort()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), _STOP_TIMEOUT)


@contextlib.asynccontextmanager
async def serve_emulator(latency: float, max_in_flight: int | None = None) -> AsyncIterator[str]:
    """Serve the project's emulator with `latency` seconds per request (and 429 beyond
    `max_in_flight` requests in hand); yield its URL."""
    from encharge_async.emulator import Emulator

    async with Emulator(
        write_key=WRITE_KEY, host=LOOPBACK, latency=latency, max_in_flight=max_in_flight
    ) as emulator:
        yield emulator.url


@contextlib.asynccontextmanager
async def serve_app(sink_url: str) -> AsyncIterator[str]:
    """Serve the FastAPI app of `benchmarks.app` under uvicorn; yield its base URL."""
    import uvicorn

    from .app import create_app

    config = uvicorn.Config(
        create_app(sink_url),
        host=LOOPBACK,
        port=0,
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(server.serve())
    try:
        deadline = loop.time() + _START_TIMEOUT
        while not server.started:
            if task.done() or loop.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        done, _ = await asyncio.wait({task}, timeout=_STOP_TIMEOUT)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=_STOP_TIMEOUT)


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def watch_stdin() -> None:
        sys.stdin.buffer.read()  # returns at EOF: the parent closed the pipe or died
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    if args.kind == "sink":
        server = serve_sink(args.latency)
    elif args.kind == "emulator":
        server = serve_emulator(args.latency, args.max_in_flight)
    else:
        server = serve_app(args.sink)
    async with server as url:
        print(f"READY {url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="kind", required=True)
    sink = sub.add_parser("sink")
    sink.add_argument("--latency", type=float, default=0.0)
    emulator = sub.add_parser("emulator")
    emulator.add_argument("--latency", type=float, default=0.0)
    emulator.add_argument("--max-in-flight", type=int, default=None)
    app = sub.add_parser("app")
    app.add_argument("--sink", required=True)
    args = parser.parse_args(argv)
    loopback_only()
    if args.kind == "emulator":
        # The emulator answers bursts of up to 64 requests one after another: on uvloop its
        # ~100 us per request delays the last of a burst less (docs/performance.md).
        try:
            import uvloop
        except ImportError:  # pragma: no cover - Windows
            asyncio.run(_serve(args))
        else:
            uvloop.run(_serve(args))
    else:
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
