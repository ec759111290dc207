"""Run every benchmark; print the tables, write `results.json` and `results.png`.

`python -m benchmarks.run` (`make bench`) takes a few minutes on 2 cores; `--quick` takes
about two minutes with much smaller runs (for a check, not for the docs). `--only` runs some
sections. Every figure is the median of repeated runs, with the min-max spread.
Servers and measured clients run in processes of their own, on loopback only.
The `caller_cost_versions` section measures the caller cost again on every `.venv-3.X`
interpreter that `make test-all` built (those missing are skipped and said so).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from . import delivery, latency, memory, report, shutdown, throughput, webapp
from ._common import PROJECT_ROOT, loopback_only, summarise
from ._proc import Runner, ServerProcess, run_child

HERE = Path(__file__).resolve().parent
PACKAGES = (
    "encharge-async",
    "httpx",
    "httpcore",
    "anyio",
    "orjson",
    "aiohttp",
    "httpx-aiohttp",
    "posthog",
    "segment-analytics-python",
    "fastapi",
    "starlette",
    "uvicorn",
    "h11",
)
SECTIONS = (
    "caller_cost",
    "caller_cost_versions",
    "cpu_per_event",
    "throughput",
    "memory",
    "shutdown",
    "webapp",
    "latency",
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of every benchmark."""

    quick: bool
    repeats: int
    caller_events: int
    versions_pythons: tuple[str, ...]
    versions_events: int
    versions_rounds: int
    cpu_events: int
    cpu_max_seconds: float
    cpu_concurrencies: tuple[int, ...]
    cpu_fresh_process_per_run: bool
    throughput_latency: float
    throughput_rounds: int
    throughput_concurrencies: tuple[int, ...]
    memory_events: int
    memory_steps: tuple[int, ...]
    memory_settle: float
    shutdown_events: int
    shutdown_latency: float
    shutdown_concurrencies: tuple[int, ...]
    app_duration: float
    app_warmup: float
    app_connections: int
    app_fresh_process: bool
    latency_sweep: tuple[float, ...]
    latency_rate: float
    latency_seconds: float
    latency_cap: int
    latency_cap_latency: float
    latency_cap_events: int
    latency_low_rates: tuple[float, ...]
    latency_low_seconds: float


FULL = Plan(
    quick=False,
    repeats=3,
    caller_events=20_000,
    # The versions `make test-all` covers; one child per version and round, interleaved.
    versions_pythons=("3.10", "3.11", "3.12", "3.13"),
    versions_events=20_000,
    versions_rounds=5,
    cpu_events=20_000,
    cpu_max_seconds=1.5,
    cpu_concurrencies=(1, 16, 64),
    cpu_fresh_process_per_run=True,
    throughput_latency=0.05,
    throughput_rounds=50,
    throughput_concurrencies=(16, 64),
    memory_events=50_000,
    memory_steps=tuple(range(2_500, 50_001, 2_500)),
    memory_settle=0.2,
    shutdown_events=10_000,
    shutdown_latency=0.02,
    shutdown_concurrencies=(16,),
    app_duration=2.5,
    app_warmup=0.5,
    app_connections=32,
    app_fresh_process=True,
    latency_sweep=(0.02, 0.1, 0.3),
    latency_rate=1000.0,
    latency_seconds=5.0,
    latency_cap=24,
    latency_cap_latency=0.1,
    latency_cap_events=3000,
    latency_low_rates=(1.0, 10.0, 50.0),
    latency_low_seconds=3.0,
)

QUICK = dataclasses.replace(
    FULL,
    quick=True,
    caller_events=2_000,
    versions_events=2_000,
    versions_rounds=2,
    cpu_events=2_000,
    cpu_max_seconds=0.3,
    cpu_fresh_process_per_run=False,
    throughput_rounds=6,
    memory_events=5_000,
    memory_steps=tuple(range(2_000, 20_001, 2_000)),
    shutdown_events=1_000,
    app_duration=0.5,
    app_warmup=0.2,
    app_fresh_process=False,
    latency_seconds=2.0,
    latency_cap_events=1000,
    latency_low_rates=(10.0,),
    latency_low_seconds=1.5,
)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover - not Linux
        pass
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "packages": versions,
        "git": _git_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _git_revision() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "encharge_async"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + (" + uncommitted changes to encharge_async/" if dirty else "")


def _caller_cost(plan: Plan, runner: Runner) -> dict[str, Any]:
    with ServerProcess("sink") as sink:
        return runner(
            "benchmarks.enqueue:measure_child",
            {"events": plan.caller_events, "repeats": plan.repeats, "sink_url": sink.url},
            timeout=600,
        )


_RUNNING = (f"{sys.version_info.major}.{sys.version_info.minor}", Path(sys.executable))


def find_venvs(
    pythons: Sequence[str],
    root: Path = PROJECT_ROOT,
    *,
    running: tuple[str, Path] | None = _RUNNING,
) -> dict[str, Path | None]:
    """`root/.venv-X/bin/python` for each version X in `pythons`, None where there is none.

    The `running` interpreter (version, path) stands in for its own version when there is no
    `.venv-X` for it: `make bench` runs in `.venv`, which `make test-all` does not rebuild.
    """
    found: dict[str, Path | None] = {}
    for version in pythons:
        python = root / f".venv-{version}" / "bin" / "python"
        if python.exists():
            found[version] = python
        elif running is not None and running[0] == version:
            found[version] = running[1]
        else:
            found[version] = None
    return found


def caller_cost_versions(
    interpreters: Mapping[str, Path | None],
    events: int,
    rounds: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """`await track()` and `track_nowait()` on each interpreter (`benchmarks.enqueue`).

    Each round runs one fresh child per interpreter, in a rotating order, so that drift in
    the machine's load spreads evenly over the versions. Per version: the interpreter's
    version, orjson's, and per call the summaries of the round medians and p99s (us). A
    version without an interpreter, or whose child fails (a stale venv), is reported as
    `{"skipped": reason}`.
    """
    results: dict[str, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for version, python in interpreters.items():
        if python is None:
            results[version] = {"skipped": f"no .venv-{version} (make test-all builds it)"}
            log(f"  Python {version}: skipped, no .venv-{version} (make test-all builds it)")
        else:
            runs[version] = []
    with ServerProcess("sink") as sink:
        for round_number in range(rounds):
            order = list(runs)
            shift = round_number % len(order) if order else 0
            for version in order[shift:] + order[:shift]:
                if version in results:  # failed in an earlier round
                    continue
                python = interpreters[version]
                try:
                    runs[version].append(
                        run_child(
                            "benchmarks.enqueue:measure_version_child",
                            {"events": events, "repeats": 1, "sink_url": sink.url},
                            timeout=300,
                            executable=str(python),
                        )
                    )
                except RuntimeError as exc:
                    reason = str(exc).strip().splitlines()[-1]
                    results[version] = {"skipped": f"{python} failed: {reason}"}
                    log(f"  Python {version}: skipped, {python} failed: {reason}")
    for version, version_runs in runs.items():
        if version in results:
            continue
        row: dict[str, Any] = {
            "python": version_runs[0]["python"],
            "orjson": version_runs[0]["orjson"],
            "rounds": len(version_runs),
        }
        for name in version_runs[0]["rows"]:
            row[name] = {
                "median_us": summarise([r["rows"][name]["median_us"] for r in version_runs]),
                "p99_us": summarise([r["rows"][name]["p99_us"] for r in version_runs]),
            }
        results[version] = row
    return {version: results[version] for version in interpreters}


def run(
    plan: Plan,
    sections: Sequence[str],
    log: Callable[[str], None],
    runner: Runner = run_child,
) -> dict[str, Any]:
    """Run the `sections` of `plan`; return the results (with the machine and the targets).

    `runner` runs each measurement: in a fresh process (`run_child`), or in this one
    (`run_inline`, quicker, for smoke tests).
    """
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "caller_cost": lambda: _caller_cost(plan, runner),
        # Always in child processes: the point is to run other interpreters than this one.
        "caller_cost_versions": lambda: caller_cost_versions(
            find_venvs(plan.versions_pythons), plan.versions_events, plan.versions_rounds, log
        ),
        "cpu_per_event": lambda: delivery.measure(
            plan.cpu_events,
            plan.repeats,
            plan.cpu_concurrencies,
            max_seconds=plan.cpu_max_seconds,
            fresh_process_per_run=plan.cpu_fresh_process_per_run,
            runner=runner,
        ),
        "throughput": lambda: throughput.measure(
            plan.throughput_latency,
            plan.throughput_rounds,
            plan.repeats,
            plan.throughput_concurrencies,
            runner=runner,
        ),
        "memory": lambda: memory.measure(
            plan.memory_events,
            plan.repeats,
            plan.memory_steps,
            runner=runner,
            settle=plan.memory_settle,
        ),
        "shutdown": lambda: shutdown.measure(
            plan.shutdown_events,
            plan.shutdown_latency,
            plan.repeats,
            plan.shutdown_concurrencies,
            runner=runner,
        ),
        "latency": lambda: latency.measure(
            plan.latency_sweep,
            plan.latency_rate,
            plan.latency_seconds,
            plan.repeats,
            cap=plan.latency_cap,
            cap_latency=plan.latency_cap_latency,
            cap_events=plan.latency_cap_events,
            low_rates=plan.latency_low_rates,
            low_seconds=plan.latency_low_seconds,
            runner=runner,
        ),
        "webapp": lambda: webapp.measure(
            plan.app_duration,
            plan.app_warmup,
            plan.app_connections,
            plan.repeats,
            fresh_app=plan.app_fresh_process,
        ),
    }
    results: dict[str, Any] = {
        "machine": machine(),
        "plan": dataclasses.asdict(plan),
        "sections": {},
        "seconds": {},
    }
    # Other work on the machine skews wall-clock figures: the load average is kept.
    results["load_average"] = {"before": os.getloadavg()}
    for name in sections:
        log(f"running {name} ...")
        start = time.perf_counter()
        results["sections"][name] = steps[name]()
        results["seconds"][name] = round(time.perf_counter() - start, 1)
        results["load_average"][name] = os.getloadavg()
        log(f"  {name}: {results['seconds'][name]:.0f} s, load average {os.getloadavg()[0]:.1f}")
    results["targets"] = report.targets(results)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="much smaller runs")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--output", type=Path, default=HERE / "results.json")
    parser.add_argument("--chart", type=Path, default=HERE / "results.png")
    args = parser.parse_args(argv)
    loopback_only()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    start = time.perf_counter()
    results = run(QUICK if args.quick else FULL, tuple(args.only), log)
    results["total_seconds"] = round(time.perf_counter() - start, 1)
    m = results["machine"]
    loads = [values[0] for values in results["load_average"].values()]
    print(
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['date']}, "
        f"git {m['git']}{' (quick)' if args.quick else ''}; 1-minute load average "
        f"{min(loads):.1f}-{max(loads):.1f}\n"
    )
    print(report.markdown(results))
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    from .chart import render

    render(results, args.chart)
    log(f"wrote {args.output} and {args.chart} in {results['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
