"""`encharge-async import` on files as people have them, against the emulator on a socket.

What must hold: no line is lost (only delivered lines and lines refused for a reason of
their own are checkpointed), no line can crash the import, dead-letter files replay, and
the exit status tells "some lines dead-lettered" (1) from "could not run" (2).
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from encharge_async._cli import main
from encharge_async.emulator import Emulator

from .test_cli import KEY, EmulatorThread, cli, summary, write_lines


@pytest.fixture
def emu() -> Any:
    with EmulatorThread() as emulator:
        yield emulator


def steps(path: Path, count: int) -> Path:
    return write_lines(
        path,
        [
            {"name": "Step", "user": {"userId": f"u{i % 5}"}, "properties": {"n": i}}
            for i in range(count)
        ],
    )


def dead_entries(path: Path) -> list[dict[str, Any]]:
    """The dead-letter file, parsed as strict JSON (no NaN: it must be valid JSONL)."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in a dead-letter file")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/"


# -- nothing lost --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_refused_key_stops_the_import_and_the_rerun_delivers_everything(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = steps(tmp_path / "small.jsonl", 50)
    status = main(["import", str(source), "--quiet", "--write-key", "wrong", "--endpoint", emu.url])
    out = capsys.readouterr()
    assert status == 2
    (line,) = [x for x in out.err.splitlines() if x.startswith("error:")]
    assert "refused the write key (HTTP 401)" in line
    assert "wrong" not in out.err + out.out
    assert summary(out.out, "delivered") == 0
    assert not (tmp_path / "small.jsonl.dead-letter.jsonl").exists()

    assert main(cli(emu, "import", str(source), "--quiet")) == 0
    out = capsys.readouterr()
    assert summary(out.out, "delivered") == 50
    assert summary(out.out, "skipped") == 0
    assert len({e.idempotency_key for e in emu.events}) == 50


@pytest.mark.slow
def test_an_unreachable_endpoint_stops_the_import_and_the_rerun_delivers_everything(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = steps(tmp_path / "e.jsonl", 20)
    down = closed_port_url()
    args = ["import", str(source), "--quiet", "--write-key", KEY, "--max-retries", "0"]
    assert main([*args, "--endpoint", down]) == 2
    err = capsys.readouterr().err
    assert "stopped: could not deliver to Encharge" in err
    assert main([*args, "--endpoint", emu.url]) == 0
    assert summary(capsys.readouterr().out, "delivered") == 20
    assert len(emu.events) == 20


@pytest.mark.slow
def test_a_wrong_endpoint_path_stops_the_import_instead_of_dead_lettering(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = steps(tmp_path / "e.jsonl", 10)
    wrong = emu.url.replace("/v1/", "/v2/")  # answered 404
    assert main(["import", str(source), "--quiet", "--write-key", KEY, "--endpoint", wrong]) == 2
    err = capsys.readouterr().err
    assert "Encharge answered HTTP 404" in err
    assert "check --endpoint" in err
    assert not (tmp_path / "e.jsonl.dead-letter.jsonl").exists()
    assert main(cli(emu, "import", str(source), "--quiet")) == 0
    assert len(emu.events) == 10


@pytest.mark.slow
def test_dead_letter_files_replay_and_restart_starts_a_fresh_one(tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "e.jsonl",
        [
            {"name": "Small", "user": {"userId": "1"}},
            {"name": "Huge", "user": {"userId": "2"}, "properties": {"blob": "x" * 1000}},
            {"method": "identify", "email": "k@example.com", "user": {"plan": "Pro"}},
            {"method": "track", "name": "Kw", "user_id": "3", "properties": {"blob": "y" * 900}},
        ],
    )
    dead_file = tmp_path / "e.jsonl.dead-letter.jsonl"
    with EmulatorThread(max_body_bytes=300) as small:
        assert main(cli(small, "import", str(source), "--quiet")) == 1
        assert main(cli(small, "import", str(source), "--quiet")) == 1  # true on reruns
        entries = dead_entries(dead_file)
        assert [e["_dead_letter"]["line"] for e in entries] == [2, 4]
        assert all("HTTP 413" in e["_dead_letter"]["error"] for e in entries)
        assert os.stat(dead_file).st_mode & 0o777 == 0o600
        # --restart: the old entries do not pile up under the new ones.
        assert main(cli(small, "import", str(source), "--quiet", "--restart")) == 1
        assert [e["_dead_letter"]["line"] for e in dead_entries(dead_file)] == [2, 4]

    with EmulatorThread() as big:
        # The dead-letter file is imported as it is, once the cause is fixed.
        assert main(cli(big, "import", str(dead_file), "--quiet")) == 0
        assert [e.body["name"] for e in big.events] == ["Huge", "Kw"]
        assert big.events[1].body["user"] == {"userId": "3"}


@pytest.mark.slow
def test_a_fresh_run_truncates_an_old_dead_letter_file(emu: Emulator, tmp_path: Path) -> None:
    source = steps(tmp_path / "e.jsonl", 3)
    dead_file = tmp_path / "e.jsonl.dead-letter.jsonl"
    dead_file.write_text('{"stale": true}\n')
    assert main(cli(emu, "import", str(source), "--quiet")) == 0
    assert not dead_file.exists()


@pytest.mark.slow
def test_nan_and_infinity_are_dead_lettered_as_valid_json(emu: Emulator, tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "e.jsonl",
        [
            '{"name": "A", "user": {"userId": "1"}, "properties": {"x": NaN}}',
            '{"name": "B", "user": {"userId": "1"}, "properties": {"x": -Infinity}}',
            {"name": "C", "user": {"userId": "1"}},
        ],
    )
    assert main(cli(emu, "import", str(source), "--quiet")) == 1
    entries = dead_entries(tmp_path / "e.jsonl.dead-letter.jsonl")
    assert [e["_dead_letter"]["line"] for e in entries] == [1, 2]
    assert "NaN is not valid JSON" in entries[0]["_dead_letter"]["error"]
    assert entries[0]["_dead_letter"]["raw"].startswith('{"name": "A"')
    assert [e.name for e in emu.events] == ["C"]


@pytest.mark.slow
def test_a_replayed_unreadable_line_says_what_to_do(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_lines(tmp_path / "e.jsonl", ["{broken", {"name": "A", "user": {"userId": "1"}}])
    assert main(cli(emu, "import", str(source), "--quiet")) == 1
    dead_file = tmp_path / "e.jsonl.dead-letter.jsonl"
    capsys.readouterr()
    assert main(cli(emu, "import", str(dead_file), "--quiet")) == 1
    assert "fix it by hand from its raw text" in capsys.readouterr().err


# -- no line can crash it ------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_lines_of_every_kind_are_dead_lettered_and_the_rest_delivered(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = json.dumps({"name": "Ok", "user": {"userId": "1"}}).encode()
    deep = b"[" * 100_000 + b"]" * 100_000
    deep_object = (
        '{"name": "D", "user": {"userId": "1"}, "properties": {"x": '
        + "[" * 5000
        + "]" * 5000
        + "}}"
    ).encode()
    lines = [
        good,
        b'{"name": "Bad \xff\xfe", "user": {"userId": "1"}}',  # not UTF-8
        good,
        deep,  # would raise RecursionError in json.loads
        good,
        b'{"name": "L", "user": {"userId": "1"}, "properties": {"s": "' + b"z" * 5000 + b'"}}',
        good,
        b'"just a string"',
        good,
        deep_object,
        good,
        b'{"name": "Big", "user": {"userId": "1"}, "properties": {"n": ' + b"9" * 5000 + b"}}",
        good,
    ]
    source = tmp_path / "e.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    status = main(cli(emu, "import", str(source), "--quiet", "--max-line-bytes", "250000"))
    out = capsys.readouterr()
    assert status == 1
    assert summary(out.out, "delivered") == 8  # the 7 good ones and the long one (line 6)
    assert summary(out.out, "dead-lettered") == 5
    entries = {
        e["_dead_letter"]["line"]: e for e in dead_entries(tmp_path / "e.jsonl.dead-letter.jsonl")
    }
    assert sorted(entries) == [2, 4, 8, 10, 12]
    assert "not valid UTF-8" in entries[2]["_dead_letter"]["error"]
    assert entries[4]["_dead_letter"]["error"] == "nested too deeply to read"
    assert len(entries[4]["_dead_letter"]["prefix"]) <= 80  # a reference, not a copy
    assert "expected a JSON object" in entries[8]["_dead_letter"]["error"]
    assert [e.name for e in emu.events].count("Ok") == 7
    for line in out.err.splitlines():
        assert len(line) < 400  # reasons are shortened, never the whole line


@pytest.mark.slow
def test_an_oversized_line_is_dead_lettered_by_reference(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "s3cr3t-" * 20_000  # 140 kB of a property nobody wants copied around
    source = write_lines(
        tmp_path / "e.jsonl",
        [
            {"name": "Before", "user": {"userId": "1"}},
            {"name": "Huge", "user": {"userId": "1"}, "properties": {"blob": secret}},
            {"name": "After", "user": {"userId": "1"}},
        ],
    )
    assert main(cli(emu, "import", str(source), "--quiet", "--max-line-bytes", "4096")) == 1
    err = capsys.readouterr().err
    assert "e.jsonl:2: dead-lettered: " in err
    assert "over the limit of 4,096 (--max-line-bytes)" in err
    dead_text = (tmp_path / "e.jsonl.dead-letter.jsonl").read_text()
    (entry,) = dead_entries(tmp_path / "e.jsonl.dead-letter.jsonl")
    assert (
        entry["_dead_letter"]["size"]
        == len(
            json.dumps({"name": "Huge", "user": {"userId": "1"}, "properties": {"blob": secret}})
        )
        + 1
    )
    assert entry["_dead_letter"]["prefix"].startswith('{"name": "Huge"')
    assert len(dead_text) < 1000
    assert [e.name for e in emu.events] == ["Before", "After"]


def test_the_default_line_cap_is_documented_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["import", "--help"])
    assert "(default: 1,048,576" in capsys.readouterr().out


# -- CSV as people have it -----------------------------------------------------------------------

ROWS = [
    ["Email", "First Name", "User ID", "Notes"],
    ["ann@example.com", "Ann", "0042", "line one\nline two"],
    ["bob@example.com", "Bob", "12345678901234567890123", 'says "hi"; ok'],
    ["cy@example.com", "Cy", "", "plain"],
]


def excel_csv(path: Path) -> Path:
    """As Excel's "CSV UTF-8" writes it in a ';' locale: a BOM, ';', CRLF, quoted newlines."""
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=";", lineterminator="\r\n").writerows(ROWS)
    # A cell's own line breaks (Alt+Enter) stay LF; records end with CRLF.
    path.write_bytes(b"\xef\xbb\xbf" + buffer.getvalue().encode())
    return path


def sheets_csv(path: Path) -> Path:
    """As Google Sheets downloads it: ',' with CRLF ends and quotes only where needed."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(ROWS)
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    return path


def writer_csv(path: Path) -> Path:
    """As Python's csv.writer writes it by default (to a file opened with newline='')."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(ROWS)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("write", [excel_csv, sheets_csv, writer_csv])
def test_csv_files_as_spreadsheets_write_them(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str], write: Any
) -> None:
    source = write(tmp_path / "people.csv")
    assert main(cli(emu, "import", str(source))) == 0
    out, err = capsys.readouterr()
    assert summary(out, "delivered") == 3
    assert summary(out, "left") == 0
    assert "not finished" not in out
    assert "100% 3/3" in err.splitlines()[-1]  # the last progress line agrees
    users = {e.body["user"]["email"]: e.body["user"] for e in emu.events}
    assert users["ann@example.com"] == {
        "email": "ann@example.com",
        "userId": "0042",  # identifiers stay text: no number, no lost zeros
        "First Name": "Ann",
        "Notes": "line one\nline two",
    }
    assert users["bob@example.com"]["userId"] == "12345678901234567890123"
    assert users["bob@example.com"]["Notes"] == 'says "hi"; ok'
    assert "userId" not in users["cy@example.com"]

    # A rerun finds all done: the records were counted as records, not lines.
    assert main(cli(emu, "import", str(source), "--quiet")) == 0
    assert summary(capsys.readouterr().out, "skipped") == 3


@pytest.mark.parametrize(
    "header",
    ["email", "Email", "E-mail", "EMAIL ADDRESS", "user_id", "User ID", "userId", "USERID"],
)
@pytest.mark.slow
def test_csv_identifying_columns_are_matched_loosely(
    emu: Emulator, tmp_path: Path, header: str
) -> None:
    value = "p@example.com" if "mail" in header.lower() else "p-1"
    source = tmp_path / "p.csv"
    source.write_text(f"{header},plan\n{value},Pro\n")
    assert main(cli(emu, "import", str(source), "--quiet")) == 0
    (event,) = emu.events
    assert value in event.body["user"].values()
    assert event.body["user"]["plan"] == "Pro"


@pytest.mark.slow
def test_a_csv_header_without_an_identifier_fails_at_once(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "p.csv"
    source.write_text("Name;Phone\nAnn;123\n")
    assert main(cli(emu, "import", str(source), "--delimiter", ",")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no email or user id column (found 'Name;Phone'; split at ',')" in err
    assert emu.events == []
    assert not (tmp_path / "p.csv.checkpoint").exists()


@pytest.mark.slow
def test_csv_delimiter_override_and_tabs(emu: Emulator, tmp_path: Path) -> None:
    piped = tmp_path / "p.csv"
    piped.write_text("email|plan\na@example.com|Pro, yearly\n")
    assert main(cli(emu, "import", str(piped), "--quiet", "--delimiter", "|")) == 0
    tabbed = tmp_path / "t.tsv"
    tabbed.write_text("email\tplan\nb@example.com\tFree; for now\n")
    assert main(cli(emu, "import", str(tabbed), "--quiet")) == 0
    assert [e.body["user"]["plan"] for e in emu.events] == ["Pro, yearly", "Free; for now"]


@pytest.mark.slow
def test_csv_huge_cells_invalid_bytes_and_unclosed_quotes_never_crash(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = "b" * 150_000  # over the csv module's default field limit (131,072)
    source = tmp_path / "p.csv"
    source.write_bytes(
        b"email,notes\n"
        + b"a@example.com,"
        + big.encode()
        + b"\n"
        + b"b@example.com,caf\xe9\n"  # Latin-1, not UTF-8
        + b'c@example.com,"'
        + b"x" * 3000
        + b'\nstill the cell"\n'  # over a 2000-byte cap
        + b"d@example.com,fine\n"
    )
    assert main(cli(emu, "import", str(source), "--quiet")) == 1
    capsys.readouterr()
    assert (
        main(cli(emu, "import", str(source), "--quiet", "--restart", "--max-line-bytes", "2000"))
        == 1
    )
    out, err = capsys.readouterr()
    assert summary(out, "delivered") == 1
    assert summary(out, "dead-lettered") == 3
    assert "p.csv:2: dead-lettered: " in err
    assert "p.csv:3: dead-lettered: not valid UTF-8" in err
    assert "p.csv:4: dead-lettered: record of" in err
    names = [e.body["user"].get("notes", "")[:4] for e in emu.events]
    # The first run: all but the Latin-1 row; the second: only the last row.
    assert sorted(names) == ["bbbb", "fine", "fine", "xxxx"]


# -- the files beside the import -----------------------------------------------------------------


@pytest.mark.slow
def test_checkpoint_and_dead_letter_files_are_private(emu: Emulator, tmp_path: Path) -> None:
    source = write_lines(tmp_path / "e.jsonl", ["{bad", {"name": "A", "user": {"userId": "1"}}])
    old = os.umask(0o022)
    try:
        assert main(cli(emu, "import", str(source), "--quiet")) == 1
    finally:
        os.umask(old)
    for name in ("e.jsonl.checkpoint", "e.jsonl.dead-letter.jsonl"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name


@pytest.mark.slow
@pytest.mark.parametrize("which", ["--checkpoint", "--dead-letter"])
def test_a_symlink_in_place_of_a_file_is_refused(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    source = write_lines(tmp_path / "e.jsonl", ["{bad"])
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert main(cli(emu, "import", str(source), "--quiet", which, str(link))) == 2
    err = capsys.readouterr().err
    assert "is a symbolic link; refusing to follow it" in err
    assert "Traceback" not in err
    assert target.read_text() == "keep me\n"


# -- counters ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_progress_and_summary_share_their_counters(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_lines(
        tmp_path / "e.jsonl", ["{bad", *[{"name": "A", "user": {"userId": "1"}}] * 5]
    )
    assert main(cli(emu, "import", str(source))) == 1
    out, err = capsys.readouterr()
    last = err.splitlines()[-1]
    assert last.startswith("100% 6/6")
    assert "delivered 5" in last
    assert "dead-lettered 1" in last
    assert summary(out, "delivered") == 5
    assert summary(out, "dead-lettered") == 1


@pytest.mark.slow
def test_exit_statuses_in_a_real_process(emu: Emulator, tmp_path: Path) -> None:
    """The documented statuses, as a shell script sees them."""
    source = write_lines(tmp_path / "e.jsonl", ["{bad", {"name": "A", "user": {"userId": "1"}}])
    env = {**os.environ, "ENCHARGE_WRITE_KEY": KEY, "ENCHARGE_INGEST_URL": emu.url}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "encharge_async", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    assert run("import", str(source), "--quiet").returncode == 1
    assert run("import", str(source), "--quiet").returncode == 1
    good = write_lines(tmp_path / "g.jsonl", [{"name": "A", "user": {"userId": "1"}}])
    assert run("import", str(good), "--quiet").returncode == 0
    missing = run("import", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1


@pytest.mark.slow
def test_a_record_with_a_lone_surrogate_is_dead_lettered_as_valid_json(
    emu: Emulator, tmp_path: Path
) -> None:
    source = write_lines(
        tmp_path / "e.jsonl",
        [
            '{"name": "Bad \\ud800", "user": {"userId": "1"}}',
            {"name": "Ok", "user": {"userId": "1"}},
        ],
    )
    assert main(cli(emu, "import", str(source), "--quiet")) == 1
    (entry,) = dead_entries(tmp_path / "e.jsonl.dead-letter.jsonl")
    assert entry["name"] == "Bad \ud800"
    assert [e.name for e in emu.events] == ["Ok"]


@pytest.mark.slow
def test_a_torn_checkpoint_line_is_not_counted(emu: Emulator, tmp_path: Path) -> None:
    source = steps(tmp_path / "e.jsonl", 3)
    assert main(cli(emu, "import", str(source), "--quiet")) == 0
    checkpoint = tmp_path / "e.jsonl.checkpoint"
    header = checkpoint.read_text().splitlines()[0]
    checkpoint.write_text(f"{header}\n1\n!2\n3")  # a crash in the middle of writing "3\n"
    assert main(cli(emu, "import", str(source), "--quiet")) == 1  # line 2 is dead-lettered
    assert len(emu.events) == 4  # line 3 again, with the same Idempotency-Key
    assert emu.events[-1].idempotency_key == emu.events[2].idempotency_key


@pytest.mark.slow
def test_a_checkpoint_left_readable_by_others_is_tightened(emu: Emulator, tmp_path: Path) -> None:
    source = steps(tmp_path / "e.jsonl", 2)
    assert main(cli(emu, "import", str(source), "--quiet")) == 0
    checkpoint = tmp_path / "e.jsonl.checkpoint"
    checkpoint.chmod(0o644)
    assert main(cli(emu, "import", str(source), "--quiet")) == 0
    assert stat.S_IMODE(os.stat(checkpoint).st_mode) == 0o600


@pytest.mark.slow
def test_a_symlink_planted_before_a_resume_is_refused_before_sending(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = steps(tmp_path / "e.jsonl", 4)
    checkpoint = tmp_path / "e.jsonl.checkpoint"
    # A first run that settled nothing (the key was refused), then someone plants a link.
    assert main(["import", str(source), "--quiet", "--write-key", "no", "--endpoint", emu.url]) == 2
    assert checkpoint.exists()
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (tmp_path / "e.jsonl.dead-letter.jsonl").symlink_to(target)
    capsys.readouterr()
    assert main(cli(emu, "import", str(source), "--quiet")) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert emu.events == []
    assert target.read_text() == "keep me\n"


@pytest.mark.slow
def test_jsonl_with_a_byte_order_mark_and_crlf(emu: Emulator, tmp_path: Path) -> None:
    source = tmp_path / "e.jsonl"
    lines = [json.dumps({"name": "A", "user": {"userId": str(i)}}) for i in range(3)]
    source.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    assert main(cli(emu, "import", str(source), "--quiet")) == 0
    assert sorted(e.body["user"]["userId"] for e in emu.events) == ["0", "1", "2"]
