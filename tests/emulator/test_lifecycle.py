"""Starting and stopping: addresses, signals, leftovers, bounded stops, failures."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from typing import Any

import httpx
import pytest

from encharge_async.emulator import Emulator
from encharge_async.emulator import _server as server_module
from encharge_async.emulator._emulator import _url_host
from encharge_async.emulator._server import ServerHandle

from ..conftest import wait_until

KEY = "k"
EVENT = {"name": "Paid", "user": {"email": "a@b.c"}}
HEADERS = {"X-Encharge-Token": KEY}


def _signals() -> dict[int, Any]:
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


@pytest.mark.slow
@pytest.mark.asyncio
async def test_start_and_stop_leave_signals_and_tasks_as_they_were():
    handlers, tasks = _signals(), _other_tasks()
    emu = Emulator(write_key=KEY)
    assert not emu.running
    assert repr(emu) == "<Emulator stopped events=0>"
    with pytest.raises(RuntimeError, match="not running"):
        _ = emu.url
    await emu.start()
    try:
        assert emu.running
        assert _signals() == handlers
        assert emu.host == "127.0.0.1"
        assert emu.port > 0
        assert emu.base_url == f"http://127.0.0.1:{emu.port}"
        assert emu.url == f"http://127.0.0.1:{emu.port}/v1/"
        assert repr(emu) == f"<Emulator {emu.url} events=0>"
        with pytest.raises(RuntimeError, match="already running"):
            await emu.start()
        async with httpx.AsyncClient() as client:
            assert (await client.post(emu.url, json=EVENT, headers=HEADERS)).status_code == 200
    finally:
        await asyncio.wait_for(emu.stop(), 10)
    assert not emu.running
    assert _signals() == handlers
    assert _other_tasks() == tasks
    await emu.stop()  # idempotent


@pytest.mark.slow
@pytest.mark.asyncio
async def test_restart_keeps_what_was_received():
    emu = Emulator(write_key=KEY)
    async with httpx.AsyncClient() as client:
        for _ in range(2):
            async with emu:
                assert (await client.post(emu.url, json=EVENT, headers=HEADERS)).status_code == 200
    assert len(emu.events) == 2


@pytest.mark.slow
@pytest.mark.asyncio
async def test_stop_is_bounded_with_a_stalled_slow_body_request_open():
    tasks = _other_tasks()
    async with httpx.AsyncClient(timeout=60) as client:
        emu = Emulator(write_key=KEY, slow_body=120.0)
        await emu.start()
        request = asyncio.create_task(client.post(emu.url, json=EVENT, headers=HEADERS))
        await emu.wait_for_events(1, timeout=5)
        await asyncio.wait_for(emu.stop(), 10)
        # The stalled answer is cut, not completed.
        with pytest.raises(httpx.TransportError):
            await asyncio.wait_for(request, 5)
    assert emu.events[0].fault == "slow_body"
    assert _other_tasks() == tasks


@pytest.mark.slow
@pytest.mark.asyncio
async def test_stop_is_bounded_with_a_stalled_upload_open():
    # A client that sends headers but never the whole body: only force gets rid of it.
    tasks = _other_tasks()
    emu = Emulator(write_key=KEY, stop_timeout=0.1)
    await emu.start()
    reader, writer = await asyncio.open_connection(emu.host, emu.port)
    writer.write(
        b"POST /v1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"X-Encharge-Token: k\r\nContent-Length: 100\r\n\r\n{"
    )
    await writer.drain()
    await wait_until(lambda: _open_connections(emu) == 1)  # uvicorn reads the stalled upload
    await asyncio.wait_for(emu.stop(), 10)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # connection closed, no answer
    writer.close()
    await writer.wait_closed()
    assert emu.events == []
    assert emu.rejected == []
    assert _other_tasks() == tasks


def _open_connections(emu: Emulator) -> int:
    """White-box: nothing public says that uvicorn holds a connection whose request is unread."""
    handle = emu._server
    assert handle is not None
    assert handle._server is not None
    return len(handle._server.server_state.connections)


class _StubbornServer:
    """Stands in for uvicorn.Server: ignores should_exit and force_exit."""

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.should_exit = self.force_exit = False
        self.server_state = type("State", (), {"tasks": {task}, "connections": set()})()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_stop_cancels_a_server_that_will_not_exit(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(server_module, "_FORCE_GRACE", 0.05)
    handle = ServerHandle("127.0.0.1", 0)
    serve = asyncio.create_task(asyncio.Event().wait())
    request = asyncio.create_task(asyncio.Event().wait())
    stub = _StubbornServer(request)
    handle._server, handle._task = stub, serve  # type: ignore[assignment]
    await asyncio.wait_for(handle.stop(0.01), 5)
    assert stub.should_exit
    assert stub.force_exit
    assert serve.cancelled()
    assert request.cancelled()
    await handle.stop(0.01)  # already stopped: nothing to do
    assert not handle.abort({"client": ("127.0.0.1", 1)})


@pytest.mark.asyncio
async def test_stop_reraises_what_the_server_died_of():
    handle = ServerHandle("127.0.0.1", 0)

    async def crash() -> None:
        raise RuntimeError("boom")

    serve = asyncio.create_task(crash())
    handle._server, handle._task = _StubbornServer(serve), serve  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(handle.stop(1), 5)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_abort_without_a_client_address_is_refused():
    async with Emulator(write_key=KEY) as emu:
        assert emu._server is not None
        assert not emu._server.abort({"client": None})
        assert not emu._server.abort({"client": ("127.0.0.1", 1)})


@pytest.mark.asyncio
async def test_a_port_in_use_raises_oserror():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        emu = Emulator(write_key=KEY, port=taken.getsockname()[1])
        with pytest.raises(OSError, match="could not listen"):
            await emu.start()
        assert not emu.running


@pytest.mark.asyncio
async def test_start_without_uvicorn_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    monkeypatch.delitem(sys.modules, "encharge_async.emulator._server")
    with pytest.raises(ImportError, match=r"encharge-async\[emulator\]"):
        await Emulator(write_key=KEY).start()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, ValueError),
        ({"write_key": ""}, ValueError),
        ({"write_keys": []}, ValueError),
        ({"write_keys": "abc"}, TypeError),
        ({"write_keys": ["a", 1]}, ValueError),
        ({"write_key": "k", "max_body_bytes": 0}, ValueError),
        ({"write_key": "k", "max_body_bytes": 1.5}, TypeError),
        ({"write_key": "k", "max_body_bytes": True}, TypeError),
        ({"write_key": "k", "max_events": 0}, ValueError),
        ({"write_key": "k", "max_event_bytes": 0}, ValueError),
        ({"write_key": "k", "max_rejected": True}, TypeError),
        ({"write_key": "k", "inspect_token": ""}, ValueError),
        ({"write_key": "k", "allowed_hosts": "localhost"}, TypeError),
    ],
)
def test_invalid_configuration_is_refused(kwargs: dict[str, Any], error: type[Exception]):
    with pytest.raises(error):
        Emulator(**kwargs)


@pytest.mark.parametrize(
    ("host", "shown"),
    [("", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("::", "[::1]"), ("::1", "[::1]"), ("a", "a")],
)
def test_url_host(host: str, shown: str):
    assert _url_host(host) == shown
