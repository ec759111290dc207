"""What the emulator lets the network do: binding off loopback, the inspection token, the
Host check (DNS rebinding) and bounded memory. Over real sockets, connecting via loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from encharge_async._cli import main
from encharge_async.emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]
KEY = "k-exposure-0123"
TOKEN = "inspect-token-4567"
EVENT = {"name": "Paid", "user": {"email": "a@b.c"}}
HEADERS = {"X-Encharge-Token": KEY}
BEARER = {"Authorization": f"Bearer {TOKEN}"}

# -- off loopback ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10", "emulator.example"])
def test_off_loopback_the_default_key_and_no_token_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="explicit write key, not the guessable 'dev'"):
        Emulator(write_key="dev", host=host, inspect_token=TOKEN)
    with pytest.raises(ValueError, match="explicit write key"):
        Emulator(write_keys=[KEY, "dev"], host=host, inspect_token=TOKEN)
    with pytest.raises(ValueError, match="needs an inspection token"):
        Emulator(write_key=KEY, host=host)
    assert Emulator(write_key=KEY, host=host, inspect_token=TOKEN).running is False


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_on_loopback_dev_and_no_token_are_fine(host: str) -> None:
    assert Emulator(write_key="dev", host=host).running is False


@pytest.mark.slow
@pytest.mark.asyncio
async def test_bound_to_every_interface_it_shows_its_addresses_and_guards_inspection() -> None:
    emulator = Emulator(write_key=KEY, host="0.0.0.0", inspect_token=TOKEN)
    async with emulator as emu, httpx.AsyncClient(timeout=5) as client:
        assert emu.exposed
        assert emu.url.startswith("http://127.0.0.1:")  # the URL that works from here
        assert emu.urls[0] == emu.url
        assert all(url.endswith(f":{emu.port}/v1/") for url in emu.urls)
        assert (await client.post(emu.url, json=EVENT, headers=HEADERS)).status_code == 200
        stats = f"{emu.base_url}/_emulator/stats"
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
            response = await client.get(stats, headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "a@b.c" not in response.text
        for view in ("events", "people", "rejected", "objects"):
            response = await client.get(f"{emu.base_url}/_emulator/{view}")
            assert response.status_code == 401
            assert "a@b.c" not in response.text
        response = await client.post(f"{emu.base_url}/_emulator/reset")
        assert response.status_code == 401
        assert emu.stats.accepted == 1
        response = await client.get(stats, headers=BEARER)
        assert response.status_code == 200
        assert response.json()["accepted"] == 1
        assert TOKEN not in response.text
        response = await client.post(f"{emu.base_url}/_emulator/reset", headers=BEARER)
        assert response.status_code == 200
        assert emu.stats.accepted == 0
        assert TOKEN not in repr(emu)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_on_loopback_a_token_given_is_required_too() -> None:
    async with Emulator(write_key=KEY, inspect_token=TOKEN) as emu, httpx.AsyncClient() as client:
        assert not emu.exposed
        assert emu.urls == [emu.url]
        response = await client.get(f"{emu.base_url}/_emulator/people")
        assert response.status_code == 401
        response = await client.get(f"{emu.base_url}/_emulator/people", headers=BEARER)
        assert response.status_code == 200
        # The ingest endpoint needs the write key, not the token.
        assert (await client.post(emu.url, json=EVENT, headers=HEADERS)).status_code == 200


# -- the Host header (DNS rebinding) ---------------------------------------------------------


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_only_the_host_names_it_serves_are_answered() -> None:
    async with Emulator(write_key=KEY) as emu, httpx.AsyncClient(timeout=5) as client:
        port = emu.port
        for host in ("evil.example", f"evil.example:{port}", "192.0.2.1", "localhost.evil"):
            for method, path in (("POST", "/v1/"), ("GET", "/_emulator/people")):
                response = await client.request(
                    method, f"{emu.base_url}{path}", json=EVENT, headers={**HEADERS, "Host": host}
                )
                assert response.status_code == 421, (host, path)
                assert "does not serve the host" in response.json()["error"]
        assert emu.stats.accepted == emu.stats.rejected == 0
        assert emu.rejected == []
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", "localhost."):
            response = await client.post(emu.url, json=EVENT, headers={**HEADERS, "Host": host})
            assert response.status_code == 200, host
        # No Host at all (HTTP/1.0): refused too.
        answer = await _raw(port, b"GET /_emulator/stats HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400"), answer[:40]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_page_from_elsewhere_cannot_reset_or_post() -> None:
    # A web page can make the browser POST to http://127.0.0.1:PORT/ (the Host is then
    # right): its Origin says where it came from.
    async with Emulator(write_key=KEY) as emu, httpx.AsyncClient(timeout=5) as client:
        await client.post(emu.url, json=EVENT, headers=HEADERS)
        for origin in ("http://evil.example", "https://evil.example:8443", "null"):
            response = await client.post(
                f"{emu.base_url}/_emulator/reset", headers={"Origin": origin}
            )
            assert response.status_code == 403, origin
            response = await client.post(emu.url, json=EVENT, headers={**HEADERS, "Origin": origin})
            assert response.status_code == 403, origin
        assert emu.stats.accepted == 1
        same = {"Origin": f"http://127.0.0.1:{emu.port}"}
        response = await client.post(f"{emu.base_url}/_emulator/reset", headers=same)
        assert response.status_code == 200
        assert emu.stats.accepted == 0


@pytest.mark.slow
@pytest.mark.asyncio
async def test_more_host_names_can_be_allowed() -> None:
    named = Emulator(write_key=KEY, allowed_hosts=["Emulator.Test"])
    async with named as emu, httpx.AsyncClient(timeout=5) as client:
        for host, status in (("emulator.test:80", 200), ("other.test", 421)):
            headers = {**HEADERS, "Host": host}
            response = await client.post(emu.url, json=EVENT, headers=headers)
            assert response.status_code == status, host
    anyone = Emulator(write_key=KEY, allowed_hosts=["*"])
    async with anyone as emu, httpx.AsyncClient(timeout=5) as client:
        headers = {**HEADERS, "Host": "anything.test"}
        assert (await client.post(emu.url, json=EVENT, headers=headers)).status_code == 200


@pytest.mark.slow
@pytest.mark.asyncio
async def test_bound_to_every_interface_its_own_addresses_are_answered() -> None:
    exposed = Emulator(write_key=KEY, host="0.0.0.0", inspect_token=TOKEN)
    async with exposed as emu, httpx.AsyncClient(timeout=5) as client:
        for url in emu.urls:  # connect via loopback, but name each address in Host
            host = url.split("/")[2]
            headers = {**HEADERS, "Host": host}
            response = await client.post(emu.url, json=EVENT, headers=headers)
            assert response.status_code == 200, host
        headers = {**HEADERS, "Host": "rebound.example"}
        assert (await client.post(emu.url, json=EVENT, headers=headers)).status_code == 421


# -- bounded memory --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.asyncio
async def test_records_are_bounded_the_oldest_go_and_are_counted() -> None:
    bounded = Emulator(write_key=KEY, max_events=3, max_rejected=2)
    async with bounded as emu, httpx.AsyncClient(timeout=5) as client:
        for i in range(5):
            event = {"name": f"E{i}", "user": {"email": f"p{i}@example.com"}}
            assert (await client.post(emu.url, json=event, headers=HEADERS)).status_code == 200
            await client.post(emu.url, json=event, headers={"X-Encharge-Token": "wrong"})
        assert await emu.wait_for_events(5, timeout=5) == emu.events  # counts every one
        assert [e.name for e in emu.events] == ["E2", "E3", "E4"]
        assert [r.body["name"] for r in emu.rejected] == ["E3", "E4"]
        stats = emu.stats
        assert (stats.accepted, stats.rejected) == (5, 5)
        assert (stats.events_dropped, stats.rejected_dropped) == (2, 3)
        page = (await client.get(f"{emu.base_url}/_emulator/events")).json()
        assert [item["body"]["name"] for item in page["items"]] == ["E2", "E3", "E4"]
        assert page["dropped"] == 2
        assert len(emu.people) == 5  # the model still saw every event


@pytest.mark.slow
@pytest.mark.asyncio
async def test_event_bytes_are_bounded_too() -> None:
    event = {"name": "Paid", "user": {"email": "a@b.c", "note": "x" * 400}}
    size = len(json.dumps(event))
    bounded = Emulator(write_key=KEY, max_event_bytes=2 * size + 10)
    async with bounded as emu, httpx.AsyncClient(timeout=5) as client:
        for _ in range(4):
            response = await client.post(emu.url, json=event, headers=HEADERS)
            assert response.status_code == 200
        assert len(emu.events) == 2
        assert emu.stats.events_dropped == 2


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_rejected_body_keeps_only_a_small_prefix() -> None:
    big = json.dumps({"name": "Paid", "user": {"email": "a@b.c"}, "pad": "x" * 500_000})
    async with Emulator(write_key=KEY) as emu, httpx.AsyncClient(timeout=10) as client:
        for _ in range(20):  # 10 MB of unauthenticated bodies
            response = await client.post(
                emu.url,
                content=big.encode(),
                headers={"Content-Type": "application/json", "User-Agent": "u" * 1000},
            )
            assert response.status_code == 401
        assert len(emu.rejected) == 20
        for record in emu.rejected:
            assert record.body_truncated is True
            assert record.body_size == len(big)
            assert isinstance(record.body, str)
            assert len(record.body.encode()) <= 1024
            assert big.startswith(record.body)
            assert record.user_agent == "u" * 256
        small = await client.post(emu.url, json=EVENT)  # a small one is kept whole, parsed
        assert small.status_code == 401
        assert emu.rejected[-1].body == EVENT
        assert emu.rejected[-1].body_truncated is False


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCHARGE_WRITE_KEY", raising=False)
    monkeypatch.delenv("ENCHARGE_EMULATOR_INSPECT_TOKEN", raising=False)


@pytest.mark.usefixtures("no_env")
@pytest.mark.parametrize(
    ("options", "error"),
    [
        ([], "explicit write key"),
        (["--write-key", "dev", "--inspect-token", TOKEN], "explicit write key"),
        (["--write-key", KEY], "inspection token"),
    ],
)
def test_the_command_refuses_to_expose_a_guessable_key_or_open_inspection(
    capsys: pytest.CaptureFixture[str], options: list[str], error: str
) -> None:
    assert main(["emulator", "--host", "0.0.0.0", "--port", "0", *options]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("error: binding '0.0.0.0'")
    assert error in line
    assert TOKEN not in line


@pytest.mark.slow
def test_the_command_off_loopback_prints_its_addresses_and_a_warning() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "ENCHARGE_EMULATOR_INSPECT_TOKEN": TOKEN,
    }
    command = [sys.executable, "-m", "encharge_async", "emulator", "--host", "0.0.0.0"]
    command += ["--port", "0", "--write-key", KEY, "--allow-host", "emulator.test"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+)/v1/", line)
        assert found, line
        base = found[1]
        with httpx.Client(timeout=5) as client:
            assert client.post(f"{base}/v1/", json=EVENT, headers=HEADERS).status_code == 200
            assert client.get(f"{base}/_emulator/events").status_code == 401
            response = client.get(f"{base}/_emulator/events", headers=BEARER)
            assert response.json()["items"][0]["body"] == EVENT
            host = {"Host": "emulator.test"}
            assert client.get(f"{base}/_emulator/stats", headers={**BEARER, **host}).is_success
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    everything = line + out + err
    assert KEY not in everything
    assert TOKEN not in everything
    assert "warning: the emulator listens on 0.0.0.0:" in err
    # Every line on stdout after the first names another address it can be reached at.
    assert all(extra.startswith("  also at http://") for extra in out.splitlines())
