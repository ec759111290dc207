"""The client's network options end to end: proxies (proxy=, the environment), verify=, and
TLS set-up errors, over real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import trustme

from encharge_async import AsyncEncharge, ClientClosedError, ConfigurationError, DeliveryError

from .conftest import WRITE_KEY

pytestmark = pytest.mark.anyio

HOST = "ingest.example.test"  # never resolved: only the proxy knows where it is


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the lean transport's proxy and TLS paths


class _Server:
    """Tracks its connection handlers, so that teardown can end them all."""

    def __init__(self) -> None:
        self.port = 0
        self.handlers: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.writers.append(writer)
        try:
            await self.handle(reader, writer)
        finally:
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        for writer in self.writers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)


class Origin(_Server):
    """A TLS server answering 200 to every POST on a keep-alive connection."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()


class MappingProxy(_Server):
    """An HTTP CONNECT proxy that sends every tunnel to the origin, whatever it names."""

    def __init__(self, origin: Origin) -> None:
        super().__init__()
        self.origin = origin
        self.connects: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            head = await reader.readuntil(b"\r\n\r\n")
            self.connects.append(head.split(b"\r\n")[0])
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.origin.port)
            self.writers.append(up_writer)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def origin_behind_proxy(tmp_path: Path) -> AsyncIterator[tuple[Origin, MappingProxy, str]]:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(HOST).configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    origin = Origin()
    proxy = MappingProxy(origin)
    origin_server = await asyncio.start_server(origin.serve, "127.0.0.1", 0, ssl=server_context)
    proxy_server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
    origin.port = origin_server.sockets[0].getsockname()[1]
    proxy.port = proxy_server.sockets[0].getsockname()[1]
    try:
        yield origin, proxy, str(ca_file)
    finally:
        for server in (origin_server, proxy_server):
            server.close()
        await proxy.stop()
        await origin.stop()
        for server in (origin_server, proxy_server):
            await asyncio.wait_for(server.wait_closed(), 5)


async def test_https_proxy_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with origin_behind_proxy(tmp_path) as (origin, proxy, ca_file):
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        async with AsyncEncharge(WRITE_KEY, endpoint=f"https://{HOST}/v1/", verify=ca_file) as c:
            for n in range(3):
                await c.track("Through the proxy", user_id=str(n))
            result = await c.flush(timeout=10)
    assert result.delivered == 3
    assert proxy.connects
    assert set(proxy.connects) == {b"CONNECT %s:443 HTTP/1.1" % HOST.encode()}
    assert len(origin.heads) == 3


async def test_the_proxy_keyword_and_no_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with origin_behind_proxy(tmp_path) as (_, proxy, ca_file):
        # An explicit proxy= is used whatever the environment says.
        monkeypatch.setenv("NO_PROXY", HOST)
        async with AsyncEncharge(
            WRITE_KEY,
            endpoint=f"https://{HOST}/v1/",
            verify=ca_file,
            proxy=f"http://127.0.0.1:{proxy.port}",
        ) as client:
            await client.track("E", user_id="1", wait=True, timeout=10)
    assert len(proxy.connects) == 1


async def test_trust_env_false_ignores_proxy_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with origin_behind_proxy(tmp_path) as (_, proxy, ca_file):
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        async with AsyncEncharge(
            WRITE_KEY,
            endpoint=f"https://{HOST}/v1/",
            verify=ca_file,
            trust_env=False,
            max_retries=0,
            shutdown_timeout=1,
        ) as client:
            # Direct: the name does not resolve here, so the one attempt fails.
            with pytest.raises(DeliveryError):
                await client.track("E", user_id="1", wait=True, timeout=10)
    assert proxy.connects == []


async def test_verify_refuses_an_unknown_authority(tmp_path: Path) -> None:
    other = trustme.CA()
    other_file = tmp_path / "other.pem"
    other.cert_pem.write_to_path(str(other_file))
    async with (
        origin_behind_proxy(tmp_path) as (origin, proxy, _),
        AsyncEncharge(
            WRITE_KEY,
            endpoint=f"https://{HOST}/v1/",
            verify=str(other_file),
            proxy=f"http://127.0.0.1:{proxy.port}",
            max_retries=0,
        ) as client,
    ):
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.track("E", user_id="1", wait=True, timeout=10)
    assert origin.heads == []  # the write key never left


def test_bad_network_options_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="verify must be"):
        AsyncEncharge(WRITE_KEY, verify=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="proxy must be"):
        AsyncEncharge(WRITE_KEY, proxy="ftp://proxy.example")
    with pytest.raises(ConfigurationError, match="trust_env must be"):
        AsyncEncharge(WRITE_KEY, trust_env="no")  # type: ignore[arg-type]


async def test_a_bad_ca_bundle_raises_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    client = AsyncEncharge(WRITE_KEY)
    with pytest.raises(ConfigurationError, match="SSL_CERT_FILE"):
        async with client:
            pass
    with pytest.raises(ClientClosedError):
        await client.track("E", user_id="1")


async def test_a_bad_ca_bundle_in_a_lazily_started_client_is_never_silent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Started by a first call instead of `async with`: the runner cannot set up TLS. The
    queued events fail (on_error), an ERROR says why, and later calls raise."""
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    errors: list[DeliveryError] = []
    client = AsyncEncharge(WRITE_KEY, on_error=errors.append)
    with caplog.at_level(logging.ERROR, logger="encharge_async"):
        await client.track("E", user_id="1")
        with anyio.fail_after(10):
            while not errors:  # noqa: ASYNC110 - until the runner has tried and stopped
                await asyncio.sleep(0.005)
        with pytest.raises(ClientClosedError, match="SSL_CERT_FILE"):
            await client.track("E", user_id="2")
    await client.aclose()
    assert len(errors) == 1
    assert "SSL_CERT_FILE" in str(errors[0])
    assert any("stopped delivering" in r.getMessage() for r in caplog.records)
    assert client.stats.failed == 1
