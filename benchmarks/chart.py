"""The chart of `benchmarks.run`: one panel per benchmark, medians with min-max bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from .report import OFF


def _errors(summaries: list[dict[str, float]]) -> list[list[float]]:
    return [
        [s["median"] - s["min"] for s in summaries],
        [s["max"] - s["median"] for s in summaries],
    ]


def _short(name: str) -> str:
    return (
        name.replace("encharge_async", "encharge")
        .replace(" (default transport)", "")
        .replace("httpx-aiohttp transport", "aiohttp transport")
        .replace("httpx.AsyncClient.post + semaphore", "httpx post")
        .replace("naive: await httpx post in the handler", "naive httpx post")
        .replace("floor: plain aiohttp client", "aiohttp floor")
    )


def _caller(ax: Axes, caller: dict[str, dict[str, float]]) -> None:
    names = list(caller)
    medians = [caller[n]["median_us"] for n in names]
    errors = [
        [caller[n]["median_us"] - caller[n]["median_min_us"] for n in names],
        [caller[n]["median_max_us"] - caller[n]["median_us"] for n in names],
    ]
    y = range(len(names))
    ax.barh(y, medians, xerr=errors, color="#4c72b0", label="median")
    ax.scatter([caller[n]["p99_us"] for n in names], y, marker="|", color="k", s=80, label="p99")
    ax.set_yticks(list(y), [_short(n) for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("us per call (log)")
    ax.set_title("Caller cost")
    ax.legend(fontsize=7)


def _cpu(ax: Axes, cpu: dict[str, dict[str, Any]]) -> None:
    clients = list(dict.fromkeys(row["client"] for row in cpu.values()))
    levels = sorted({row["concurrency"] for row in cpu.values()})
    width = 0.8 / len(clients)
    for k, client in enumerate(clients):
        summaries = [cpu[f"{client} @ {c}"]["cpu_us_per_event"] for c in levels]
        ax.bar(
            [i + k * width for i in range(len(levels))],
            [s["median"] for s in summaries],
            width,
            yerr=_errors(summaries),
            label=_short(client),
        )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(levels))], [f"c={c}" for c in levels])
    ax.set_yscale("log")
    ax.set_ylabel("CPU us per delivered event (log)")
    ax.set_title("CPU per delivered event")
    ax.legend(fontsize=7)


def _throughput(ax: Axes, throughput: dict[str, dict[str, Any]]) -> None:
    rows = list(throughput.values())
    x = range(len(rows))
    ax.bar(
        [i - 0.2 for i in x],
        [r["littles_law_events_per_s"] for r in rows],
        0.4,
        color="#cccccc",
        label="Little's law",
    )
    summaries = [r["events_per_s"] for r in rows]
    ax.bar(
        [i + 0.2 for i in x],
        [s["median"] for s in summaries],
        0.4,
        yerr=_errors(summaries),
        label="measured",
    )
    for i, row in enumerate(rows):
        share = row["fraction_of_littles_law"]["median"]
        ax.annotate(f"{share:.0%}", (i + 0.2, summaries[i]["median"]), ha="center", va="bottom")
    latency = rows[0]["latency_s"] * 1000 if rows else 0
    ax.set_xticks(list(x), [f"c={r['concurrency']}" for r in rows])
    ax.set_ylabel("events/s")
    ax.set_title(f"Throughput at {latency:.0f} ms latency")
    ax.legend(fontsize=7)


def _memory(ax: Axes, memory: dict[str, Any]) -> None:
    for kind, series in memory["at_default_bounds"].items():
        points = series["points"]
        ax.plot(
            [p["offered"] for p in points], [p["rss_mib"] for p in points], marker=".", label=kind
        )
    ax.axvline(10_000, color="#999999", linestyle="--", linewidth=1, label="10,000 events")
    ax.set_xlabel("events offered while the endpoint is down")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    per_event = next(iter(memory["bytes_per_event"].values()))["median"]
    ax.set_title(f"Memory at default bounds ({per_event:,.0f} B/event)")
    ax.legend(fontsize=7)


def _shutdown(ax: Axes, shutdown: dict[str, dict[str, Any]]) -> None:
    rows = list(shutdown.values())
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["ideal_s"] for r in rows], 0.4, color="#cccccc", label="ideal")
    summaries = [r["seconds"] for r in rows]
    ax.bar(
        [i + 0.2 for i in x],
        [s["median"] for s in summaries],
        0.4,
        yerr=_errors(summaries),
        label="aclose()",
    )
    ax.set_xticks(
        list(x),
        [
            f"{r['events']:,} events\nc={r['concurrency']}, {r['latency_s'] * 1000:.0f} ms"
            for r in rows
        ],
    )
    ax.set_ylabel("seconds")
    ax.set_title("Shutdown drain")
    ax.legend(fontsize=7)


def _webapp(ax: Axes, webapp: dict[str, dict[str, Any]]) -> None:
    names = list(webapp)
    summaries = [webapp[n]["requests_per_s"] for n in names]
    colors = ["#999999" if n == OFF else "#4c72b0" for n in names]
    y = range(len(names))
    ax.barh(y, [s["median"] for s in summaries], xerr=_errors(summaries), color=colors)
    for i, name in enumerate(names):
        p99 = webapp[name]["p99_ms"]["median"]
        ax.annotate(f"  p99 {p99:.0f} ms", (summaries[i]["max"], i), va="center", fontsize=7)
    ax.set_yticks(list(y), [_short(n) for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("requests/s")
    ax.set_xlim(right=max(s["max"] for s in summaries) * 1.25)
    ax.set_title("FastAPI app, one event per request")


def render(results: dict[str, Any], path: Path) -> None:
    """Write the chart of `results` to `path` (PNG)."""
    sections = results["sections"]
    panels = [
        ("caller_cost", _caller),
        ("cpu_per_event", _cpu),
        ("throughput", _throughput),
        ("memory", _memory),
        ("shutdown", _shutdown),
        ("webapp", _webapp),
    ]
    present = [(key, draw) for key, draw in panels if key in sections]
    columns = 2
    rows = max(1, (len(present) + columns - 1) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(13, 4.2 * rows), squeeze=False)
    for ax, (key, draw) in zip(axes.flat, present, strict=False):
        draw(ax, sections[key])
    for ax in list(axes.flat)[len(present) :]:
        ax.set_visible(False)
    machine = results["machine"]
    figure.suptitle(
        f"encharge-async benchmarks: {machine['cpu']} x{machine['cores']}, "
        f"Python {machine['python']}, {machine['date'][:10]}"
        + (" (quick)" if results["plan"].get("quick") else ""),
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
