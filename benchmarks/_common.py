"""Shared pieces of the benchmarks: the typical event, summaries, the loopback-only guard."""

from __future__ import annotations

import ipaddress
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WRITE_KEY = "bench-write-key"
LOOPBACK = "127.0.0.1"


class Summary(TypedDict):
    """Repeated runs of one figure: median, min-max spread and every run."""

    median: float
    min: float
    max: float
    runs: list[float]


def summarise(values: Sequence[float]) -> Summary:
    """Median, min and max of repeated runs (keeps the runs too)."""
    if not values:
        raise ValueError("no runs to summarise")
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": [float(v) for v in values],
    }


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The value at `fraction` (0-1) of an already sorted sequence (nearest rank)."""
    if not sorted_values:
        raise ValueError("no values")
    index = min(len(sorted_values) - 1, int(len(sorted_values) * fraction))
    return float(sorted_values[index])


def typical_event(i: int) -> dict[str, Any]:
    """Keyword arguments of a typical `track` call (one person per `i`), ~140 bytes on the wire."""
    return {
        "email": f"user{i}@example.com",
        "user_id": str(100_000 + i),
        "properties": {"plan": "Premium", "source": "signup-form", "trial": True},
    }


def typical_payload(i: int) -> dict[str, Any]:
    """The same event in Encharge's wire format (what the baselines POST)."""
    return {
        "name": "Registered user",
        "user": {"email": f"user{i}@example.com", "userId": str(100_000 + i)},
        "properties": {"plan": "Premium", "source": "signup-form", "trial": True},
    }


_ALLOWED_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})


def _is_loopback(host: object) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    if host in _ALLOWED_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _loopback_audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" or event == "socket.sendto":
        address = args[1]
        if isinstance(address, tuple) and not _is_loopback(address[0]):
            raise ConnectionRefusedError(f"benchmarks are loopback-only: refused {address[0]!r}")
    elif event in ("socket.getaddrinfo", "socket.gethostbyname") and not _is_loopback(args[0]):
        raise OSError(f"benchmarks are loopback-only: refused to resolve {args[0]!r}")


_guarded = False


def loopback_only() -> None:
    """Refuse, for the rest of this process, any connection or name lookup off loopback.

    Installed in every benchmark process (an audit hook cannot be removed), so that a
    competitor's client that is misconfigured, or phones home, fails instead of sending.
    """
    global _guarded
    if not _guarded:
        sys.addaudithook(_loopback_audit)
        _guarded = True


def child_env() -> dict[str, str]:
    """Environment for benchmark subprocesses: the project importable, no proxies."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and k != "PYTHONPATH"
    }
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env["NO_PROXY"] = "*"
    env.pop("ENCHARGE_INGEST_URL", None)
    env.pop("ENCHARGE_WRITE_KEY", None)
    return env
