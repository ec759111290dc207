"""Markdown tables and target checks from the results of `benchmarks.run`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._common import Summary

OURS = "encharge_async: track_nowait()"
TRACK = "encharge_async: await track()"
SDKS = ("posthog: AsyncClient.capture()", "segment: analytics-python track()")
# Bytes per event as RSS counts them: informative (allocator rounding and arenas included);
# the target is judged on the bytes the library allocates per event (tracemalloc).
RSS_PER_EVENT = "RSS, a new person per event"
DEFAULT = "encharge_async (default transport)"
NAIVE = "naive httpx.AsyncClient.post + semaphore"
FLOOR = "floor: plain aiohttp client"
OFF = "tracking off"


def spread(summary: Summary, digits: int = 1) -> str:
    """`median (min-max)`."""
    return (
        f"{summary['median']:,.{digits}f} "
        f"({summary['min']:,.{digits}f}-{summary['max']:,.{digits}f})"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def caller_table(caller: dict[str, dict[str, float]]) -> str:
    ours = caller[OURS]["median_us"]
    rows = [
        [
            name,
            f"{row['median_us']:.2f} ({row['median_min_us']:.2f}-{row['median_max_us']:.2f})",
            f"{row['p99_us']:.1f} ({row['p99_min_us']:.1f}-{row['p99_max_us']:.1f})",
            f"{row['median_us'] / ours:.2f}x",
        ]
        for name, row in caller.items()
    ]
    return _table(["call", "median us", "p99 us", "vs track_nowait"], rows)


def versions_table(versions: dict[str, dict[str, Any]]) -> str:
    """Our caller cost per Python version (`run.caller_cost_versions`)."""
    measured = [version for version, row in versions.items() if "skipped" not in row]
    # The ratios are against 3.11 (the figures elsewhere in docs/performance.md), if measured.
    base_name = "3.11" if "3.11" in measured else (measured[0] if measured else "")
    base = versions.get(base_name)
    rows = []
    for version, row in versions.items():
        if "skipped" in row:
            rows.append([version, f"skipped: {row['skipped']}", "", "", "", "", ""])
            continue
        assert base is not None
        cells = [f"{row['python']} (orjson {row['orjson'] or 'not installed'})"]
        for name in (TRACK, OURS):
            cells.append(spread(row[name]["median_us"], 2))
            cells.append(spread(row[name]["p99_us"], 1))
        cells += [
            f"{row[name]['median_us']['median'] / base[name]['median_us']['median']:.2f}x"
            for name in (TRACK, OURS)
        ]
        rows.append(cells)
    header = [
        "Python",
        "await track(): median us",
        "p99 us",
        "track_nowait(): median us",
        "p99 us",
        f"track() vs {base_name}",
        f"track_nowait() vs {base_name}",
    ]
    return _table(header, rows)


def cpu_table(cpu: dict[str, dict[str, Any]]) -> str:
    clients = list(dict.fromkeys(row["client"] for row in cpu.values()))
    levels = sorted({row["concurrency"] for row in cpu.values()})
    header = [
        "client",
        *(f"c={c}: us/event" for c in levels),
        *(f"c={c}: vs floor" for c in levels),
    ]
    rows = []
    for client in clients:
        cells = [client]
        cells += [spread(cpu[f"{client} @ {c}"]["cpu_us_per_event"], 0) for c in levels]
        for c in levels:
            floor = cpu.get(f"{FLOOR} @ {c}")
            own = cpu[f"{client} @ {c}"]["cpu_us_per_event"]["median"]
            cells.append(f"{own / floor['cpu_us_per_event']['median']:.1f}x" if floor else "")
        rows.append(cells)
    rates = [
        [
            client,
            *(f"{cpu[f'{client} @ {c}']['events_per_s']['median']:,.0f}" for c in levels),
            *(f"{cpu[f'{client} @ {c}']['events']['median']:,.0f}" for c in levels),
            *(f"{cpu[f'{client} @ {c}']['sink_core_share']['median']:.0%}" for c in levels),
        ]
        for client in clients
    ]
    rate_header = [
        "client",
        *(f"c={c}: events/s" for c in levels),
        *(f"c={c}: events counted" for c in levels),
        *(f"c={c}: sink CPU" for c in levels),
    ]
    return _table(header, rows) + "\n\n" + _table(rate_header, rates)


def throughput_table(throughput: dict[str, dict[str, Any]]) -> str:
    rows = [
        [
            str(row["concurrency"]),
            f"{row['latency_s'] * 1000:.0f} ms",
            spread(row["events_per_s"], 0),
            f"{row['littles_law_events_per_s']:,.0f}",
            f"{row['fraction_of_littles_law']['median']:.1%}",
            spread(row["cpu_us_per_event"], 0),
        ]
        for row in throughput.values()
    ]
    header = ["concurrency", "latency", "events/s", "Little's law", "share", "client CPU us/event"]
    return _table(header, rows)


def memory_tables(memory: dict[str, Any]) -> str:
    rows = [
        [name, spread(summary, 0), f"{summary['median'] / 600:.1f}x"]
        for name, summary in memory["bytes_per_event"].items()
    ]
    per_event = _table(["queued events (endpoint down)", "bytes/event", "vs 600 B"], rows)
    bound_rows = []
    for kind, series in memory["at_default_bounds"].items():
        points = series["points"]
        at_bound = next((p for p in points if p["dropped"]), points[-1])
        last = points[-1]
        bound_rows.append(
            [
                kind,
                f"{at_bound['offered']:,} / {at_bound['rss_mib']:.1f} MiB",
                f"{last['offered']:,} / {last['rss_mib']:.1f} MiB",
                f"{last['queued']:,} ({last['queued_mib']:.1f} MiB)",
                f"{series['rss_growth_after_bound_mib']:+.1f} MiB",
                f"{series['peak_rss_mib']:.1f} MiB",
            ]
        )
    bounds = _table(
        [
            "default bounds",
            "offered / RSS when full",
            "offered / RSS at the end",
            "queued at the end",
            "RSS growth once full",
            "peak RSS",
        ],
        bound_rows,
    )
    return (
        f"Typical event: {memory['body_bytes']:.0f} bytes of JSON; "
        f"{memory['events']:,} events queued.\n\n{per_event}\n\n{bounds}"
    )


def shutdown_table(shutdown: dict[str, dict[str, Any]]) -> str:
    rows = [
        [
            str(row["concurrency"]),
            f"{row['events']:,}",
            f"{row['latency_s'] * 1000:.0f} ms",
            spread(row["seconds"], 2),
            f"{row['ideal_s']:.2f}",
            f"{row['ideal_over_actual']['median']:.0%}",
        ]
        for row in shutdown.values()
    ]
    return _table(["concurrency", "events", "latency", "aclose() s", "ideal s", "share"], rows)


def latency_tables(latency: dict[str, Any]) -> str:
    """The latency sweep, the refusals and the connections (`benchmarks.latency`)."""
    sweep = _table(
        [
            "latency",
            "offered",
            "delivered events/s",
            "drain after the last call, s",
            "dropped",
            "peak limit",
        ],
        [
            [
                name,
                f"{row['offered_events_per_s']:,.0f}/s for {row['seconds']:g} s",
                spread(row["events_per_s"], 0),
                spread(row["drain_s"], 2),
                spread(row["dropped"], 0),
                spread(row["peak_limit"], 0),
            ]
            for name, row in latency["sweep"].items()
        ],
    )
    refusals = latency["refusals"]
    refused = _table(
        ["server", "events", "refused share", "lost", "events/s", "limit at the end"],
        [
            [
                f"429 above {refusals['cap']} in hand, {refusals['latency_s'] * 1000:.0f} ms",
                f"{refusals['events']:,}",
                f"{refusals['refused_share']['median']:.1%} "
                f"({refusals['refused_share']['min']:.1%}-{refusals['refused_share']['max']:.1%})",
                spread(refusals["lost"], 0),
                spread(refusals["events_per_s"], 0),
                spread(refusals["final_limit"], 0),
            ]
        ],
    )
    connections = _table(
        ["rate", "events", "connections opened"],
        [
            [name, f"{row['events']:,}", spread(row["connections"], 0)]
            for name, row in latency["connections"].items()
        ],
    )
    return f"{sweep}\n\n{refused}\n\n{connections}"


def webapp_table(webapp: dict[str, dict[str, Any]]) -> str:
    off = webapp.get(OFF)
    rows = []
    for name, row in webapp.items():
        rps = row["requests_per_s"]
        cpu = row.get("app_cpu_us_per_request")
        share = f"{rps['median'] / off['requests_per_s']['median']:.0%}" if off else ""
        extra = ""
        if off and cpu and "app_cpu_us_per_request" in off:
            extra = f"{cpu['median'] - off['app_cpu_us_per_request']['median']:+,.0f}"
        backlog = ""
        if "backlog" in row:
            backlog = (
                f"{row['delivered_share']['median']:.0%} / {row['backlog']['median']:,.0f}"
                f" / {row['dropped']['max']:,.0f}"
            )
        rows.append(
            [
                name,
                spread(rps, 0),
                share,
                spread(row["p50_ms"], 1),
                spread(row["p99_ms"], 1),
                spread(cpu, 0) if cpu else "",
                extra,
                backlog,
            ]
        )
    header = [
        "handler",
        "requests/s",
        "vs off",
        "p50 ms",
        "p99 ms",
        "app CPU us/request",
        "vs off",
        "delivered by the end / backlog / dropped (max)",
    ]
    return _table(header, rows)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met."""
    checks: list[dict[str, Any]] = []
    sections = results["sections"]

    def check(name: str, value: float, goal: str, met: bool) -> None:
        checks.append({"target": name, "measured": value, "goal": goal, "met": met})

    caller = sections.get("caller_cost")
    if caller:
        for ours in (TRACK, OURS):
            median = caller[ours]["median_us"]
            call = ours.partition(": ")[2]
            check(f"{call} median, us", median, "< 3 us", median < 3)
            for sdk in SDKS:
                ratio = caller[sdk]["median_us"] / median
                check(f"{sdk} / {call}", ratio, ">= 10x", ratio >= 10)

    cpu = sections.get("cpu_per_event")
    if cpu:
        levels = sorted({row["concurrency"] for row in cpu.values()})

        def median(client: str, c: int) -> float:
            value: float = cpu[f"{client} @ {c}"]["cpu_us_per_event"]["median"]
            return value

        top = levels[-1]
        ratio = median(NAIVE, top) / median(DEFAULT, top)
        check(f"default transport vs naive httpx at c={top}", ratio, ">= 3x cheaper", ratio >= 3)
        growth = median(DEFAULT, top) / median(DEFAULT, levels[0])
        check(
            f"default transport: c={top} / c={levels[0]} (growth with concurrency)",
            growth,
            "<= 1.2 (none)",
            growth <= 1.2,
        )
        # The faster transport the issue asks for is built in: the default one. The
        # httpx-aiohttp option is reported in the tables (2.1-2.2x its floor: httpx's request
        # and response objects cost the difference), not checked against this target.
        for c in levels:
            ratio = median(DEFAULT, c) / median(FLOOR, c)
            check(f"default transport vs aiohttp floor at c={c}", ratio, "<= 2x", ratio <= 2)
    for row in sections.get("throughput", {}).values():
        share = row["fraction_of_littles_law"]["median"]
        check(
            f"throughput at c={row['concurrency']}, {row['latency_s'] * 1000:.0f} ms",
            share,
            ">= 90% of Little's law",
            share >= 0.9,
        )
    latency = sections.get("latency")
    if latency:
        row = latency["sweep"].get("100 ms")
        if row is not None:
            drain = row["drain_s"]["median"]
            check(
                f"100 ms: {row['offered_events_per_s']:,.0f} events/s, backlog drained after "
                "the last call, s",
                drain,
                "<= 2 s",
                drain <= 2,
            )
        refusals = latency["refusals"]
        share = refusals["refused_share"]["median"]
        check(
            f"429 above {refusals['cap']} in hand: share of requests refused",
            share,
            "< 25%, nothing lost",
            share < 0.25 and refusals["lost"]["max"] == 0,
        )
        for name, row in latency["connections"].items():
            if row["rate"] == 10:
                opened = row["connections"]["max"]
                check(f"connections opened at {name}", opened, "<= 3", opened <= 3)
    memory = sections.get("memory")
    if memory:
        for name, summary in memory["bytes_per_event"].items():
            if name == RSS_PER_EVENT:
                continue
            check(
                f"bytes per queued event ({name})",
                summary["median"],
                "< 600",
                summary["median"] < 600,
            )
        for kind, series in memory["at_default_bounds"].items():
            growth = series["rss_growth_after_bound_mib"]
            check(
                f"RSS growth once the queue is full ({kind})", growth, "flat (< 2 MiB)", growth < 2
            )
    return checks


def targets_table(checks: list[dict[str, Any]]) -> str:
    rows = []
    for item in checks:
        value = item["measured"]
        shown = f"{value:.1%}" if "%" in item["goal"] else f"{value:,.2f}"
        rows.append([item["target"], shown, item["goal"], "met" if item["met"] else "MISSED"])
    return _table(["target", "measured", "goal", ""], rows)


def markdown(results: dict[str, Any]) -> str:
    """Every table of `results`, as Markdown."""
    sections = results["sections"]
    parts = []
    builders = [
        ("caller_cost", "Caller cost (time per call on the caller's path)", caller_table),
        ("caller_cost_versions", "Caller cost per Python version (.venv-3.X)", versions_table),
        ("cpu_per_event", "CPU per delivered event (loopback sink)", cpu_table),
        ("throughput", "Throughput under latency (emulator)", throughput_table),
        ("memory", "Memory while the endpoint is down", memory_tables),
        ("shutdown", "Shutdown: aclose() draining a full queue", shutdown_table),
        ("latency", "Defaults against slow, refusing and quiet endpoints", latency_tables),
        ("webapp", "Impact on a FastAPI app (uvicorn, loopback)", webapp_table),
    ]
    for key, title, build in builders:
        if key in sections:
            parts.append(f"### {title}\n\n{build(sections[key])}")
    if results.get("targets"):
        parts.append(f"### Targets\n\n{targets_table(results['targets'])}")
    return "\n\n".join(parts)
