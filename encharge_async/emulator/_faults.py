"""Fault injection: what to inject (`Faults`) and the seeded dice that decide it."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

DropMode = Literal["before", "after"]

#: Every fault kind that is counted, in a stable order.
FAULT_KINDS = (
    "latency",
    "error",
    "rate_limited",
    "rate_limit_exceeded",
    "concurrency_limit_exceeded",
    "drop_before",
    "drop_after",
    "slow_body",
)


def _number(name: str, value: Any, *, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value!r}")
    return float(value)


def _rate(name: str, value: Any) -> float:
    return _number(name, value, low=0.0, high=1.0)


def _latency(name: str, value: Any) -> float | tuple[float, float]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be seconds or a (low, high) pair")
        low = _number(name, value[0], low=0.0)
        high = _number(name, value[1], low=low)
        return (low, high)
    return _number(name, value, low=0.0)


def _statuses(name: str, value: Any) -> tuple[int, ...]:
    statuses = tuple(value) if isinstance(value, Iterable) else (value,)
    if not statuses or not all(
        isinstance(s, int) and not isinstance(s, bool) and 400 <= s <= 599 for s in statuses
    ):
        raise ValueError(f"{name} must be one or more HTTP error statuses (400-599)")
    return statuses


def _retry_after(name: str, value: Any) -> int | str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"{name} must be whole seconds >= 0 or an HTTP date string")


def _rate_limit(name: str, value: Any) -> float | None:
    if value is None:
        return None
    result = _number(name, value, low=0.0)
    if result == 0:
        raise ValueError(f"{name} must be > 0 requests per second, or None")
    return result


def _burst(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"{name} must be an integer >= 1, or None")


def _optional_retry_after(name: str, value: Any) -> int | str | None:
    return None if value is None else _retry_after(name, value)


def _drop_mode(name: str, value: Any) -> DropMode:
    if value == "before":
        return "before"
    if value == "after":
        return "after"
    raise ValueError(f"{name} must be 'before' or 'after', got {value!r}")


_VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "latency": _latency,
    "error_rate": _rate,
    "error_statuses": _statuses,
    "rate_limited_rate": _rate,
    "retry_after": _retry_after,
    "rate_limit": _rate_limit,
    "rate_limit_burst": _burst,
    "max_in_flight": _burst,
    "max_in_flight_retry_after": _optional_retry_after,
    "drop_rate": _rate,
    "drop_mode": _drop_mode,
    "slow_body": lambda name, value: _number(name, value, low=0.0),
    "slow_body_rate": _rate,
}


@dataclass
class Faults:
    """The faults an emulator injects; change any field while it runs.

    - `latency`: seconds added before each ingest request is handled, or a (low, high)
      range drawn uniformly.
    - `error_rate`: fraction of requests answered with a status from `error_statuses`.
    - `rate_limited_rate`: fraction answered 429 with `Retry-After: retry_after`
      (whole seconds, or a string such as an HTTP date, sent as is).
    - `rate_limit`: requests per second allowed (token bucket of `rate_limit_burst`
      tokens, default the rate rounded up); beyond it, 429 with the seconds until a
      token is free in `Retry-After`.
    - `max_in_flight`: ingest requests handled at once; one arriving while that many are
      in hand is answered 429 at once, with `Retry-After: max_in_flight_retry_after` when
      that is not None (a server with a concurrency limit, such as a worker pool).
    - `drop_rate`: fraction of connections cut instead of answered. `drop_mode`
      "before": the event is lost; "after": it is recorded first (an ambiguous failure).
    - `slow_body`: seconds the body of a 200 answer stalls after its headers are sent,
      for a `slow_body_rate` fraction of accepted events.

    Assigning an invalid value raises ValueError or TypeError.
    """

    latency: float | tuple[float, float] = 0.0
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    rate_limited_rate: float = 0.0
    retry_after: int | str = 1
    rate_limit: float | None = None
    rate_limit_burst: int | None = None
    max_in_flight: int | None = None
    max_in_flight_retry_after: int | str | None = None
    drop_rate: float = 0.0
    drop_mode: DropMode = "before"
    slow_body: float = 0.0
    slow_body_rate: float = 1.0

    def __setattr__(self, name: str, value: Any) -> None:
        validator = _VALIDATORS.get(name)
        if validator is None:
            raise AttributeError(f"Faults has no field {name!r}")
        super().__setattr__(name, validator(name, value))

    def clear(self) -> None:
        """Turn every fault off (back to the defaults)."""
        for f in fields(self):
            setattr(self, f.name, f.default)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy."""
        result = {f.name: getattr(self, f.name) for f in fields(self)}
        result["latency"] = list(self.latency) if isinstance(self.latency, tuple) else self.latency
        result["error_statuses"] = list(self.error_statuses)
        return result


@dataclass(frozen=True)
class Refusal:
    """An injected error answer."""

    kind: str
    status: int
    error: str
    headers: tuple[tuple[str, str], ...] = ()


class FaultInjector:
    """Decides, with a seedable random.Random, which faults hit each request."""

    def __init__(
        self,
        faults: Faults,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.faults = faults
        self._seed = seed
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Re-seed the dice, zero the counts and refill the token bucket."""
        self.random = random.Random(self._seed)
        self._counts = dict.fromkeys(FAULT_KINDS, 0)
        self._bucket_config: tuple[float, int] | None = None
        self._tokens = 0.0
        self._refilled_at = 0.0

    def counts(self) -> dict[str, int]:
        """Return how many faults of each kind were injected."""
        return dict(self._counts)

    def count(self, kind: str) -> None:
        """Count one injected fault of `kind`."""
        self._counts[kind] += 1

    def _chance(self, rate: float) -> bool:
        if rate <= 0.0:
            return False
        return rate >= 1.0 or self.random.random() < rate

    def latency(self) -> float:
        """Return the delay for this request (counted when > 0)."""
        latency = self.faults.latency
        delay = self.random.uniform(*latency) if isinstance(latency, tuple) else latency
        if delay > 0:
            self.count("latency")
        return delay

    def crowded(self, in_hand: int) -> Refusal | None:
        """Return a 429 if `in_hand` requests (this one included) exceed `max_in_flight`."""
        faults = self.faults
        limit = faults.max_in_flight
        if limit is None or in_hand <= limit:
            return None
        self.count("concurrency_limit_exceeded")
        retry_after = faults.max_in_flight_retry_after
        return Refusal(
            "concurrency_limit_exceeded",
            429,
            "Too many concurrent requests.",
            () if retry_after is None else (("Retry-After", str(retry_after)),),
        )

    def refusal(self) -> Refusal | None:
        """Return an injected error answer for this request, or None (counted)."""
        faults = self.faults
        wait = self._take_token()
        if wait is not None:
            self.count("rate_limit_exceeded")
            return Refusal(
                "rate_limit_exceeded", 429, "Rate limit exceeded.", (("Retry-After", str(wait)),)
            )
        if self._chance(faults.rate_limited_rate):
            self.count("rate_limited")
            return Refusal(
                "rate_limited",
                429,
                "Too many requests.",
                (("Retry-After", str(faults.retry_after)),),
            )
        if self._chance(faults.error_rate):
            statuses = faults.error_statuses
            status = statuses[0] if len(statuses) == 1 else self.random.choice(statuses)
            self.count("error")
            return Refusal("error", status, "Injected server error.")
        return None

    def drop(self) -> str | None:
        """Return "drop_before" or "drop_after" if this connection is to be cut (uncounted)."""
        if self._chance(self.faults.drop_rate):
            return "drop_after" if self.faults.drop_mode == "after" else "drop_before"
        return None

    def slow_body(self) -> float:
        """Return how long to stall this 200 answer's body, or 0 (uncounted)."""
        if self.faults.slow_body > 0 and self._chance(self.faults.slow_body_rate):
            return self.faults.slow_body
        return 0.0

    def _take_token(self) -> int | None:
        """Take a token; return None if one was free, else whole seconds until one is."""
        rate = self.faults.rate_limit
        if rate is None:
            self._bucket_config = None
            return None
        capacity = self.faults.rate_limit_burst or max(1, math.ceil(rate))
        now = self._clock()
        if self._bucket_config != (rate, capacity):
            self._bucket_config = (rate, capacity)
            self._tokens = float(capacity)
        else:
            self._tokens = min(capacity, self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - self._tokens) / rate))
