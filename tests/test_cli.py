"""The command line, end to end against the emulator on a real socket."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from encharge_async._cli import main
from encharge_async.emulator import Emulator

from .conftest import block_until

KEY = "cli-test-key"


class EmulatorThread:
    """An emulator served from its own thread and loop, so `main()` can run anyio.run here."""

    def __init__(self, **options: Any) -> None:
        self.emulator = Emulator(write_key=KEY, **options)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.emulator:
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Emulator:
        self._thread.start()
        assert self._ready.wait(10), "emulator did not start"
        return self.emulator

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with EmulatorThread() as emulator:
        yield emulator


def cli(emu: Emulator, *args: str) -> list[str]:
    return [*args, "--write-key", KEY, "--endpoint", emu.url]


@pytest.mark.slow
def test_send_track(emu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        cli(
            emu,
            "send",
            "track",
            "Registered user",
            "--email",
            "jon@example.com",
            "--user-id",
            "42",
            "--user",
            "firstName=Jon",
            "--prop",
            "plan=Premium",
            "--prop",
            "seats=3",
            "--source-ip",
            "203.0.113.7",
        )
    )
    out = capsys.readouterr()
    assert status == 0
    assert out.out.startswith("accepted: track (message id ")
    (event,) = emu.events
    assert event.body == {
        "name": "Registered user",
        "user": {"firstName": "Jon", "email": "jon@example.com", "userId": "42"},
        "properties": {"plan": "Premium", "seats": 3},
        "sourceIp": "203.0.113.7",
    }
    assert KEY not in out.out + out.err


@pytest.mark.slow
def test_send_identify_alias_group(emu: Emulator) -> None:
    assert main(cli(emu, "send", "identify", "--email", "a@example.com", "--user", "tags=vip")) == 0
    assert (
        main(
            cli(
                emu,
                "send",
                "alias",
                "--previous-email",
                "a@example.com",
                "--email",
                "b@example.com",
            )
        )
        == 0
    )
    assert (
        main(
            cli(
                emu,
                "send",
                "group",
                "company",
                "--prop",
                "externalId=acme",
                "--email",
                "b@example.com",
            )
        )
        == 0
    )
    person = emu.person(email="b@example.com")
    assert person is not None
    assert person.tags == frozenset({"vip"})
    assert [t for t, _ in person.objects] == ["company"]


@pytest.mark.slow
def test_send_with_a_refused_key_could_not_run(
    emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not the event's fault: exit status 2 and one line on stderr, as docs/cli.md says."""
    status = main(
        [
            "send",
            "track",
            "E",
            "--user-id",
            "1",
            "--write-key",
            "wrong-key-xyz",
            "--endpoint",
            emu.url,
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert "refused the write key (HTTP 401)" in err
    assert "wrong-key-xyz" not in err


@pytest.mark.slow
def test_send_to_an_unreachable_endpoint_could_not_run(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "send",
            "track",
            "E",
            "--user-id",
            "1",
            "--write-key",
            "k",
            "--endpoint",
            "http://127.0.0.1:9/v1/",
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert err.startswith("error: could not deliver to Encharge")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["send", "track", "E"], "needs --email or --user-id"),
        (["send", "track", "E", "--user-id", "1", "--prop", "novalue"], "expects KEY=VALUE"),
        (["send", "alias", "--email", "x@example.com"], "alias needs --previous-email"),
    ],
)
@pytest.mark.slow
def test_send_bad_input(
    emu: Emulator, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(cli(emu, *args)) == 2
    assert message in capsys.readouterr().err
    assert emu.events == []


def test_send_without_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ENCHARGE_WRITE_KEY", raising=False)
    assert main(["send", "identify", "--user-id", "1"]) == 2
    assert "no write key" in capsys.readouterr().err


def summary(out: str, label: str) -> int:
    """A count from the import summary, e.g. summary(out, "delivered")."""
    match = re.search(rf"^  {label}\s+([\d,]+)", out, re.MULTILINE)
    assert match, out
    return int(match.group(1).replace(",", ""))


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


@pytest.mark.slow
def test_import_jsonl_with_broken_lines(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_lines(
        tmp_path / "events.jsonl",
        [
            {"name": "identify", "user": {"email": "a@example.com", "firstName": "A"}},
            {"name": "Step", "user": {"email": "a@example.com"}, "properties": {"n": 1}},
            "{not json",
            {"method": "track", "name": "Step", "email": "a@example.com", "properties": {"n": 2}},
            {"method": "explode"},
            {"type": "alias", "previousEmail": "a@example.com", "user": {"email": "b@example.com"}},
            {"name": "Step", "user": {"firstName": "nobody"}},
            {
                "type": "group",
                "objectType": "company",
                "properties": {"externalId": "acme"},
                "user": {"email": "b@example.com"},
            },
            {"type": "mystery"},
            [1, 2],
            "",
            {
                "name": "Step",
                "user": {"email": "b@example.com"},
                "properties": {"n": 3},
                "sourceIp": "10.0.0.1",
            },
        ],
    )
    status = main(cli(emu, "import", str(source), "--quiet"))
    out = capsys.readouterr()
    assert status == 1  # some lines were bad
    assert summary(out.out, "delivered") == 6
    assert summary(out.out, "dead-lettered") == 5
    for line in (3, 5, 7, 9, 10):
        assert f"events.jsonl:{line}: dead-lettered" in out.err
    dead = [
        json.loads(x)
        for x in (tmp_path / "events.jsonl.dead-letter.jsonl").read_text().splitlines()
    ]
    assert sorted(d["_dead_letter"]["line"] for d in dead) == [3, 5, 7, 9, 10]
    person = emu.person(email="b@example.com")
    assert person is not None
    assert person.events == ("Step", "Step", "Step")
    assert [e.body.get("properties", {}).get("n") for e in emu.events if e.name == "Step"] == [
        1,
        2,
        3,
    ]

    # A second run finds everything done and sends nothing; the exit status still says that
    # lines were dead-lettered.
    assert main(cli(emu, "import", str(source), "--quiet")) == 1
    assert summary(capsys.readouterr().out, "skipped") == 11
    assert len(emu.events) == 6


@pytest.mark.slow
def test_import_csv(emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "people.csv"
    source.write_text(
        "email,user_id,firstName,event,properties.plan,user.company\n"
        "a@example.com,1,Ann,,,Acme\n"
        "b@example.com,2,Bob,Upgraded,Pro,\n"
        "only,three,cells\n"
        ",,,,,\n"
    )
    assert main(cli(emu, "import", str(source), "--quiet")) == 1
    bodies = [e.body for e in emu.events]
    assert {
        "name": "identify",
        "user": {"firstName": "Ann", "company": "Acme", "email": "a@example.com", "userId": "1"},
    } in bodies
    assert {
        "name": "Upgraded",
        "user": {"email": "b@example.com", "userId": "2"},
        "properties": {"firstName": "Bob", "plan": "Pro"},
    } in bodies
    assert "people.csv:4: dead-lettered: expected 6 columns, got 3" in capsys.readouterr().err


@pytest.mark.slow
def test_import_dead_letters_server_refusals(tmp_path: Path) -> None:
    with EmulatorThread(max_body_bytes=300) as emu:
        source = write_lines(
            tmp_path / "e.jsonl",
            [
                {"name": "Small", "user": {"userId": 1}},
                {"name": "Huge", "user": {"userId": 2}, "properties": {"blob": "x" * 1000}},
            ],
        )
        assert main(cli(emu, "import", str(source), "--quiet")) == 1
        (dead,) = [
            json.loads(x) for x in (tmp_path / "e.jsonl.dead-letter.jsonl").read_text().splitlines()
        ]
        assert dead["_dead_letter"]["line"] == 2
        assert "HTTP 413" in dead["_dead_letter"]["error"]
        assert dead["name"] == "Huge"
        assert [e.name for e in emu.events] == ["Small"]


@pytest.mark.slow
def test_import_checkpoint_of_another_file(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_lines(tmp_path / "e.jsonl", [{"name": "A", "user": {"userId": 1}}])
    assert main(cli(emu, "import", str(source), "--quiet")) == 0
    write_lines(source, [{"name": "B", "user": {"userId": 1}}])
    assert main(cli(emu, "import", str(source), "--quiet")) == 2
    assert "--restart" in capsys.readouterr().err
    assert main(cli(emu, "import", str(source), "--quiet", "--restart")) == 0
    assert [e.name for e in emu.events] == ["A", "B"]


def test_import_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["import", str(tmp_path / "nope.jsonl"), "--write-key", "k"]) == 2
    assert "no such file" in capsys.readouterr().err


def run_import_process(emu: Emulator, source: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ENCHARGE_WRITE_KEY": KEY}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "encharge_async",
            "import",
            str(source),
            "--endpoint",
            emu.url,
            "--concurrency",
            "4",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def many_events(path: Path, count: int) -> Path:
    return write_lines(
        path,
        [
            {"name": "Step", "user": {"userId": f"p{i % 7}"}, "properties": {"n": i}}
            for i in range(count)
        ],
    )


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    block_until(predicate, timeout)


def check_complete(emu: Emulator, count: int) -> None:
    keys = [e.idempotency_key for e in emu.events]
    lines = sorted({int(k.rsplit("-", 1)[1]) for k in keys if k})
    assert lines == list(range(1, count + 1))  # nothing missing
    by_person: dict[str, list[int]] = {}
    for event in emu.events:
        if not event.duplicate:
            by_person.setdefault(event.body["user"]["userId"], []).append(
                event.body["properties"]["n"]
            )
    for sequence in by_person.values():
        assert sequence == sorted(sequence)  # per-person order kept across the resume


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_import_interrupted_then_resumed_sends_nothing_twice(
    tmp_path: Path, sig: signal.Signals
) -> None:
    count = 300
    with EmulatorThread(latency=0.01) as emu:
        source = many_events(tmp_path / "e.jsonl", count)
        process = run_import_process(emu, source)
        wait_for(lambda: len(emu.events) >= 40)
        process.send_signal(sig)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 130, err
        assert "not finished" in out
        partial = len(emu.events)
        assert partial < count

        process = run_import_process(emu, source)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert summary(out, "skipped") == partial
        check_complete(emu, count)
        assert emu.duplicates == {}  # nothing sent twice


@pytest.mark.slow
def test_import_killed_then_resumed_loses_nothing(tmp_path: Path) -> None:
    count = 300
    with EmulatorThread(latency=0.01) as emu:
        source = many_events(tmp_path / "e.jsonl", count)
        process = run_import_process(emu, source)
        wait_for(lambda: len(emu.events) >= 40)
        process.kill()
        process.communicate(timeout=30)

        process = run_import_process(emu, source)
        _out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        check_complete(emu, count)
        # Only events in flight at the kill can arrive twice, with the same Idempotency-Key.
        assert sum(emu.duplicates.values()) <= 4


@pytest.mark.slow
def test_demo_runs_and_prints_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--users", "30", "--requests", "300"]) == 0
    out = capsys.readouterr().out
    assert "summary" in out
    assert summary(out, "delivered") == 300
    assert "enqueue p50" in out
    assert '"email": "user7@example.com"' in out


@pytest.mark.slow
def test_emulator_command(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "encharge_async",
            "emulator",
            "--port",
            "0",
            "--write-key",
            "k1",
            "--latency",
            "0.001-0.002",
            "--error-rate",
            "0",
            "--max-in-flight",
            "8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1/)", line)
        url = match.group(1) if match else ""
        assert url.startswith("http://127.0.0.1:"), line
        response = httpx.post(
            url, json={"name": "E", "user": {"userId": 1}}, headers={"X-Encharge-Token": "k1"}
        )
        assert response.status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert "k1" not in line + out + err


def test_emulator_command_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["emulator", "--port", "0", "--error-rate", "7"])
    assert info.value.code == 2
    assert "--error-rate: a fraction is 0 to 1, got '7'" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("encharge-async 0.")
