"""The benchmark harness runs and produces well-formed results.

Timings are the benchmarks' business, not the tests': nothing here asserts a figure. Every
section runs once, tiny, with measurements in this process (servers still run in their
own processes, on loopback).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _common, chart, delivery, enqueue, report, run, webapp
from benchmarks._proc import ServerProcess, run_inline

TINY = dataclasses.replace(
    run.QUICK,
    repeats=1,
    caller_events=100,
    # A version no machine has: the section reports it skipped without starting a child
    # (test_caller_cost_versions measures this interpreter).
    versions_pythons=("0.0",),
    versions_events=100,
    versions_rounds=1,
    cpu_events=40,
    cpu_max_seconds=10.0,
    cpu_concurrencies=(2,),
    throughput_latency=0.01,
    throughput_rounds=2,
    throughput_concurrencies=(2,),
    memory_events=300,
    memory_steps=(100, 200),
    memory_settle=0.01,
    shutdown_events=20,
    shutdown_latency=0.01,
    shutdown_concurrencies=(4,),
    app_duration=0.2,
    app_warmup=0.05,
    app_connections=4,
    app_fresh_process=False,
    latency_sweep=(0.01,),
    latency_rate=100.0,
    latency_seconds=0.2,
    latency_cap=4,
    latency_cap_latency=0.01,
    latency_cap_events=40,
    latency_low_rates=(20.0,),
    latency_low_seconds=0.2,
)


def _is_summary(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"median", "min", "max", "runs"}
        and value["min"] <= value["median"] <= value["max"]
        and len(value["runs"]) >= 1
    )


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return run.run(TINY, run.SECTIONS, log=lambda line: None, runner=run_inline)


@pytest.mark.slow
def test_machine_and_plan(results: dict[str, Any]) -> None:
    machine = results["machine"]
    assert machine["cores"] >= 1
    assert machine["python"]
    assert machine["packages"]["encharge-async"]
    assert results["plan"]["repeats"] == 1
    assert set(results["sections"]) == set(run.SECTIONS)
    json.dumps(results)  # what run.py writes to results.json


@pytest.mark.slow
def test_caller_cost(results: dict[str, Any]) -> None:
    caller = results["sections"]["caller_cost"]
    assert set(caller) == set(enqueue.CANDIDATES)
    for row in caller.values():
        assert 0 < row["median_min_us"] <= row["median_us"] <= row["median_max_us"]
        assert row["p99_us"] >= row["median_us"]


@pytest.mark.slow
def test_versions_missing_are_skipped(results: dict[str, Any]) -> None:
    assert results["sections"]["caller_cost_versions"] == {
        "0.0": {"skipped": "no .venv-0.0 (make test-all builds it)"}
    }


def test_find_venvs(tmp_path: Path) -> None:
    python = tmp_path / ".venv-3.12" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    assert run.find_venvs(("3.11", "3.12"), tmp_path, running=None) == {
        "3.11": None,
        "3.12": python,
    }
    # The interpreter running the benchmarks stands in for its own version, not for others.
    running = tmp_path / "python"
    assert run.find_venvs(("3.11", "3.12"), tmp_path, running=("3.11", running)) == {
        "3.11": running,
        "3.12": python,
    }


@pytest.mark.slow
def test_caller_cost_versions() -> None:
    lines: list[str] = []
    versions = run.caller_cost_versions(
        {"this": Path(sys.executable), "0.0": None}, events=100, rounds=2, log=lines.append
    )
    assert list(versions) == ["this", "0.0"]
    assert versions["0.0"] == {"skipped": "no .venv-0.0 (make test-all builds it)"}
    assert lines == ["  Python 0.0: skipped, no .venv-0.0 (make test-all builds it)"]
    row = versions["this"]
    assert row["python"] == platform.python_version()
    assert row["rounds"] == 2
    for name in enqueue.VERSION_CANDIDATES:
        assert _is_summary(row[name]["median_us"])
        assert _is_summary(row[name]["p99_us"])
        assert len(row[name]["median_us"]["runs"]) == 2
    table = report.versions_table(versions)
    assert "| 0.0 | skipped: no .venv-0.0" in table
    assert f"| {platform.python_version()} (orjson " in table
    assert "1.00x" in table  # the first measured version is the base when 3.11 is not


@pytest.mark.slow
def test_cpu_per_event(results: dict[str, Any]) -> None:
    cpu = results["sections"]["cpu_per_event"]
    assert {row["client"] for row in cpu.values()} == set(delivery.CLIENTS)
    for row in cpu.values():
        assert row["concurrency"] == 2
        for key in ("cpu_us_per_event", "events_per_s", "events", "sink_core_share"):
            assert _is_summary(row[key]), key
        assert row["events"]["median"] == TINY.cpu_events


@pytest.mark.slow
def test_throughput(results: dict[str, Any]) -> None:
    (row,) = results["sections"]["throughput"].values()
    assert row["littles_law_events_per_s"] == pytest.approx(2 / 0.01)
    assert _is_summary(row["events_per_s"])
    assert _is_summary(row["fraction_of_littles_law"])


@pytest.mark.slow
def test_memory(results: dict[str, Any]) -> None:
    memory = results["sections"]["memory"]
    assert memory["body_bytes"] > 0
    assert all(_is_summary(s) for s in memory["bytes_per_event"].values())
    for series in memory["at_default_bounds"].values():
        assert [p["offered"] for p in series["points"]] == [0, *TINY.memory_steps]
        assert series["peak_rss_mib"] > 0


@pytest.mark.slow
def test_shutdown(results: dict[str, Any]) -> None:
    (row,) = results["sections"]["shutdown"].values()
    assert row["ideal_s"] == pytest.approx(20 * 0.01 / 4)
    assert _is_summary(row["seconds"])


@pytest.mark.slow
def test_webapp(results: dict[str, Any]) -> None:
    rows = results["sections"]["webapp"]
    assert set(rows) == set(webapp.SCENARIOS)
    for row in rows.values():
        assert _is_summary(row["requests_per_s"])
        assert row["requests_per_s"]["median"] > 0
        assert _is_summary(row["p99_ms"])


@pytest.mark.slow
def test_latency(results: dict[str, Any]) -> None:
    latency = results["sections"]["latency"]
    (row,) = latency["sweep"].values()
    assert row["offered_events_per_s"] == TINY.latency_rate
    for key in ("events_per_s", "drain_s", "dropped", "peak_limit"):
        assert _is_summary(row[key]), key
    refusals = latency["refusals"]
    assert refusals["lost"]["max"] == 0
    assert 0 <= refusals["refused_share"]["median"] < 1
    (low,) = latency["connections"].values()
    assert low["events"] == 4
    assert _is_summary(low["connections"])


@pytest.mark.slow
def test_report_and_chart(results: dict[str, Any], tmp_path: Path) -> None:
    text = report.markdown(results)
    for title in (
        "Caller cost",
        "CPU per delivered event",
        "Throughput",
        "Memory",
        "Shutdown",
        "slow, refusing and quiet endpoints",
    ):
        assert title in text
    assert all(isinstance(check["met"], bool) for check in results["targets"])
    path = tmp_path / "results.png"
    chart.render(results, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sink_answers_and_stops() -> None:
    with ServerProcess("sink") as sink:
        assert sink.url.startswith("http://127.0.0.1:")
        pid = sink.pid
    with pytest.raises(RuntimeError):
        ServerProcess("sink").pid  # noqa: B018 - the property raises when not running
    assert pid > 0


@pytest.mark.parametrize(
    ("event", "args", "refused"),
    [
        ("socket.connect", (None, ("127.0.0.1", 80)), False),
        ("socket.connect", (None, ("::1", 80, 0, 0)), False),
        ("socket.connect", (None, ("192.0.2.1", 80)), True),
        ("socket.getaddrinfo", ("localhost", 80, 0, 0, 0), False),
        ("socket.getaddrinfo", ("us.i.posthog.com", 443, 0, 0, 0), True),
    ],
)
def test_loopback_guard(event: str, args: tuple[Any, ...], refused: bool) -> None:
    if refused:
        with pytest.raises(OSError, match="loopback-only"):
            _common._loopback_audit(event, args)
    else:
        _common._loopback_audit(event, args)
