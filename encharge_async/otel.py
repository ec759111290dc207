"""OpenTelemetry metrics for a client (the `otel` extra).

```python
from encharge_async.otel import instrument

uninstrument = instrument(encharge)   # uses the global MeterProvider unless given one
```

Counters read `client.stats` when the SDK collects, so they cost nothing per event:
`encharge.events.enqueued`, `.delivered`, `.failed`, `.dropped`, `.retried` (ObservableCounter);
`encharge.queue.events`, `encharge.queue.bytes`, `encharge.requests.in_flight`,
`encharge.requests.limit` (the adaptive concurrency limit) (ObservableGauge).
`encharge.delivery.duration` is a histogram of the seconds from an event's first delivery
attempt to its acceptance, retries included (queueing time is not part of it: the
caller's line records no clock, to stay cheap).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

try:
    from opentelemetry import metrics
except ImportError as _missing:  # pragma: no cover - tested in a subprocess without the extra
    raise ImportError(
        "encharge_async.otel needs OpenTelemetry's API: pip install 'encharge-async[otel]'"
    ) from _missing

from ._client import AsyncEncharge
from ._events import Event
from ._version import __version__

__all__ = ["instrument"]


def instrument(
    client: AsyncEncharge,
    *,
    meter_provider: metrics.MeterProvider | None = None,
    attributes: dict[str, str] | None = None,
) -> Callable[[], None]:
    """Report `client`'s counters, queue gauges and delivery durations as OTel metrics.

    `attributes` are added to every measurement (e.g. {"service.instance": "web-1"}).
    Returns a function that stops the reporting.
    """
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    meter = provider.get_meter("encharge_async", __version__)
    labels = dict(attributes or {})
    stopped = False

    def observe(field: str) -> Callable[[metrics.CallbackOptions], Iterable[metrics.Observation]]:
        def callback(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
            if stopped:
                return []
            return [metrics.Observation(int(getattr(client.stats, field)), labels)]

        return callback

    instruments: list[object] = []
    for field in ("enqueued", "delivered", "failed", "dropped", "retried", "filtered"):
        instruments.append(
            meter.create_observable_counter(
                f"encharge.events.{field}",
                callbacks=[observe(field)],
                unit="{event}",
                description=f"Events {field} since the client was created",
            )
        )
    for name, field, unit, description in (
        ("encharge.queue.events", "queued", "{event}", "Events waiting to be sent"),
        ("encharge.queue.bytes", "queued_bytes", "By", "Serialised bytes waiting to be sent"),
        ("encharge.requests.in_flight", "in_flight", "{request}", "Requests in flight"),
        (
            "encharge.requests.limit",
            "concurrency_limit",
            "{request}",
            "Requests allowed in flight at once (adapts up to max_concurrency)",
        ),
        ("encharge.endpoint.failing", "failing", "1", "1 while every request to Encharge fails"),
    ):
        instruments.append(
            meter.create_observable_gauge(
                name, callbacks=[observe(field)], unit=unit, description=description
            )
        )
    histogram = meter.create_histogram(
        "encharge.delivery.duration",
        unit="s",
        description="Seconds from an event's first delivery attempt to its acceptance",
    )

    def on_delivered(event: Event, seconds: float) -> None:
        histogram.record(seconds, labels)

    # The one place outside the pipeline that hears of each delivery (deliberate).
    remove_listener = client._add_delivery_listener(on_delivered)  # noqa: SLF001

    def uninstrument() -> None:
        nonlocal stopped
        stopped = True
        remove_listener()

    return uninstrument
