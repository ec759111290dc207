"""The command line as a person meets it: flags, help, one-line errors, the write key."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from encharge_async._cli import build_parser, main
from encharge_async.emulator import Emulator

from .test_cli import KEY, EmulatorThread, cli, summary


@pytest.fixture
def emu() -> Any:
    with EmulatorThread() as emulator:
        yield emulator


def run_cli(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ENCHARGE_")}
    return subprocess.run(
        [sys.executable, "-m", "encharge_async", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**environment, **env},
        timeout=60,
        check=False,
    )


def usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The stderr of a command line that argparse refuses; it must be one line, status 2."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


# -- identifiers are text ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("user_id", ["42", "1e3", "12345678901234567890123", "007", "true"])
def test_user_ids_on_the_command_line_are_strings(emu: Emulator, user_id: str) -> None:
    assert (
        main(cli(emu, "send", "identify", "--user-id", user_id, "--user", "userId=" + user_id)) == 0
    )
    assert (
        main(cli(emu, "send", "alias", "--previous-user-id", user_id, "--user-id", "n" + user_id))
        == 0
    )
    first, second = (e.body for e in emu.events)
    assert first["user"]["userId"] == user_id
    assert second["previousUserId"] == user_id


@pytest.mark.slow
def test_properties_keep_their_json_values(emu: Emulator) -> None:
    args = ["--prop", "n=3", "--prop", "ok=true", "--prop", "x=NaN", "--prop", "s=text"]
    assert main(cli(emu, "send", "track", "E", "--user-id", "1", *args)) == 0
    (event,) = emu.events
    assert event.body["properties"] == {"n": 3, "ok": True, "x": "NaN", "s": "text"}


# -- one-line errors with status 2 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["emulator", "--port", "99999"], "argument --port: a port is 0 to 65535, got 99999"),
        (["emulator", "--port", "-1"], "argument --port: must be at least 0, got -1"),
        (["demo", "--users", "0"], "argument --users: must be at least 1, got 0"),
        (["demo", "--requests", "0"], "argument --requests: must be at least 1, got 0"),
        (["demo", "--concurrency", "0"], "argument --concurrency: must be at least 1, got 0"),
        (["import", "f.jsonl", "--concurrency", "0"], "--concurrency: must be at least 1"),
        (["import", "f.jsonl", "--max-line-bytes", "x"], "expected a whole number, got 'x'"),
        (["import", "f.jsonl", "--delimiter", ";;"], "a delimiter is one character"),
        (["send", "track", "E", "--timeout", "nan"], "expected a finite number"),
        (["send", "track", "E", "--concurrency", "3"], "unrecognized arguments: --concurrency"),
        (
            ["send", "identify", "--write-key", "k", "--write-key-file", "f"],
            "not allowed with argument --write-key",
        ),
        (["emulator", "--error-rate", "2"], "--error-rate: a fraction is 0 to 1, got '2'"),
        (["emulator", "--max-in-flight", "0"], "--max-in-flight: must be at least 1, got 0"),
    ],
)
def test_bad_arguments_are_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    err = usage_error(capsys, *args)
    assert message in err
    assert "--help)" in err


def test_errors_name_flags_not_keywords(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "alias", "--email", "x@example.com", "--write-key", "k"]) == 2
    err = capsys.readouterr().err
    assert "--previous-email or --previous-user-id" in err
    assert "previous_email" not in err


def test_no_key_names_the_flags(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ENCHARGE_WRITE_KEY", raising=False)
    assert main(["send", "identify", "--user-id", "1"]) == 2
    err = capsys.readouterr().err
    assert "pass --write-key" in err
    assert "write_key" not in err


def test_values_in_errors_are_shortened_and_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    value = "evil\r\n\x1b[2J" + "x" * 5000
    assert main(["send", "track", "E", "--user-id", "1", "--write-key", "k", "--prop", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "\r" not in err
    assert "\x1b" not in err
    assert "'evil\\r\\n\\x1b[2J" in err
    assert "'... (5010 characters)" in err
    assert len(err) < 200


@pytest.mark.slow
def test_tracebacks_only_with_verbose(tmp_path: Path) -> None:
    source = tmp_path / "e.jsonl"
    source.write_text('{"name": "A", "user": {"userId": "1"}}\n')
    a_directory = tmp_path / "dir"
    a_directory.mkdir()
    args = ["import", str(source), "--checkpoint", str(a_directory), "--write-key", "k"]
    quiet = run_cli(*args)
    assert quiet.returncode == 2
    assert quiet.stderr.count("\n") == 1
    assert "Traceback" not in quiet.stderr
    loud = run_cli(*args, "-v")  # -v after the subcommand
    assert loud.returncode == 2
    assert "Traceback" in loud.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["-v", "send", "track", "E"],
        ["send", "-v", "track", "E"],
        ["send", "track", "E", "-v"],
        ["import", "f", "-vv"],
        ["demo", "-v"],
        ["emulator", "-v"],
    ],
)
def test_verbose_is_accepted_anywhere(args: list[str]) -> None:
    parsed = build_parser().parse_args(args)
    assert sum(v for k, v in vars(parsed).items() if k.startswith("verbose")) >= 1


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _leaf_parsers(sub)
    return found or [parser]


def test_every_flag_has_help_text() -> None:
    leaves = _leaf_parsers(build_parser())
    assert len(leaves) == 7  # send track/identify/alias/group, import, demo, emulator
    for parser in leaves:
        assert parser.description, parser.prog
        for action in parser._actions:
            assert action.help, f"{parser.prog} {action.option_strings or action.dest}"


def test_send_alias_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["send", "alias", "--help"])
    out = capsys.readouterr().out
    assert "the email the person has now" in out
    assert "--write-key-file PATH" in out
    assert "--concurrency" not in out


@pytest.mark.slow
def test_the_emulator_without_its_extra_is_one_line() -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None; "
        "from encharge_async._cli import main; sys.exit(main(sys.argv[1:]))"
    )
    for args in (["emulator", "--port", "0"], ["demo", "--requests", "1"]):
        result = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert "pip install 'encharge-async[emulator]'" in result.stderr


@pytest.mark.slow
def test_demo_requests_are_what_it_sends(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--users", "300", "--requests", "20"]) == 0
    out = capsys.readouterr().out
    assert "20 requests" in out
    assert summary(out, "delivered") == 20


# -- the write key from a file -------------------------------------------------------------------


@pytest.mark.slow
def test_write_key_file(emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"  {KEY}\n\n")
    base = ["send", "identify", "--user-id", "1", "--endpoint", emu.url]
    assert main([*base, "--write-key-file", str(key_file)]) == 0
    out = capsys.readouterr()
    assert KEY not in out.out + out.err

    key_file.write_text("\n  \n")
    assert main([*base, "--write-key-file", str(key_file)]) == 2
    assert "--write-key-file: " in capsys.readouterr().err
    assert main([*base, "--write-key-file", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err
    assert err.count("\n") == 1


@pytest.mark.slow
def test_write_key_file_from_stdin_and_for_import(emu: Emulator, tmp_path: Path) -> None:
    send = run_cli(
        "send",
        "identify",
        "--user-id",
        "1",
        "--endpoint",
        emu.url,
        "--write-key-file",
        "-",
        stdin=KEY + "\n",
    )
    assert send.returncode == 0, send.stderr
    source = tmp_path / "e.jsonl"
    source.write_text('{"name": "A", "user": {"userId": "1"}}\n')
    imported = run_cli(
        "import",
        str(source),
        "--quiet",
        "--endpoint",
        emu.url,
        "--write-key-file",
        "-",
        stdin=KEY,
    )
    assert imported.returncode == 0, imported.stderr
    assert KEY not in send.stdout + send.stderr + imported.stdout + imported.stderr
    assert len(emu.events) == 2


@pytest.mark.slow
def test_a_wrong_key_from_a_file_is_not_echoed(emu: Emulator, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("wrong-key-do-not-print\n")
    result = run_cli(
        "send",
        "identify",
        "--user-id",
        "1",
        "--endpoint",
        emu.url,
        "--write-key-file",
        str(key_file),
    )
    assert result.returncode == 2  # not the event's fault: it could not run
    assert "HTTP 401" in result.stderr
    assert "wrong-key-do-not-print" not in result.stderr + result.stdout


# -- the counters behind the progress display and the summary ------------------------------------


def test_a_resumed_run_counts_its_rate_from_its_own_lines() -> None:
    from encharge_async._cli._progress import Counters

    counters = Counters(total=100, skipped=6, started=0.0)
    assert counters.eta(now=1.0) == "--:--"  # nothing done by this run yet: unknown, not 0:00
    counters.delivered = 10
    assert counters.rate(now=2.0) == 5.0  # the 6 skipped lines are not this run's work
    assert counters.left == 84
    assert counters.eta(now=2.0) == "0:16"


def test_the_display_shows_100_percent_only_when_all_is_done() -> None:
    import io

    from encharge_async._cli._progress import Counters, Progress

    stream = io.StringIO()
    counters = Counters(total=3000, delivered=2997, started=0.0)
    progress = Progress(counters, stream=stream)
    progress.update(force=True, now=10.0)
    counters.delivered = 3000
    progress.finish(now=11.0)
    first, last = stream.getvalue().splitlines()
    assert first.startswith(" 99% 2,997/3,000")
    assert last.startswith("100% 3,000/3,000  273/s  ETA 0:00  delivered 3,000")


@pytest.mark.parametrize("latency", ["x", "0.1-y", "-1", "inf"])
def test_emulator_latency_is_checked(capsys: pytest.CaptureFixture[str], latency: str) -> None:
    assert "latency is seconds (0.05) or a range" in usage_error(
        capsys, "emulator", "--port", "0", f"--latency={latency}"
    )


def test_emulator_fault_errors_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before anything is served: the range is upside down.
    assert main(["emulator", "--port", "0", "--latency", "0.5-0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --latency: ")
    assert err.count("\n") == 1


def test_verbose_shows_the_traceback_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "e.jsonl"
    source.write_text('{"name": "A", "user": {"userId": "1"}}\n')
    args = ["import", str(source), "--checkpoint", str(tmp_path), "--write-key", "k", "-v"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "not a regular file" in err
