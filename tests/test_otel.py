"""OpenTelemetry metrics, read back through the SDK's in-memory reader."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from encharge_async.otel import instrument

from .conftest import ClientFactory, Recorder

pytestmark = pytest.mark.anyio


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, Any] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                (point,) = metric.data.data_points
                points[metric.name] = point
    return points


async def test_counters_gauges_and_histogram(make_client: ClientFactory) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    answers = iter([503, 200, 200, 400])
    recorder = Recorder(lambda request: httpx.Response(next(answers)))
    async with make_client(transport=httpx.MockTransport(recorder), max_concurrency=1) as client:
        stop = instrument(client, meter_provider=provider, attributes={"app": "test"})
        await client.track("A", user_id=1, wait=True)
        await client.track("B", user_id=2, wait=True)
        await client.track("C", user_id=3)
        await client.flush(timeout=5)
        points = collect(reader)
        stop()
        stop()  # idempotent
    assert points["encharge.events.enqueued"].value == 3
    assert points["encharge.events.delivered"].value == 2
    assert points["encharge.events.failed"].value == 1
    assert points["encharge.events.retried"].value == 1
    assert points["encharge.events.dropped"].value == 0
    assert points["encharge.queue.events"].value == 0
    assert points["encharge.queue.bytes"].value == 0
    assert points["encharge.requests.in_flight"].value == 0
    assert points["encharge.requests.limit"].value == 1  # max_concurrency=1: the ceiling
    duration = points["encharge.delivery.duration"]
    assert duration.count == 2
    assert duration.sum >= 0
    assert dict(duration.attributes) == {"app": "test"}
    # White-box: uninstrumenting leaves no listener behind (nothing public lists them).
    assert client._pipeline.ledger.delivery_listeners == []
    provider.shutdown()


async def test_uninstrumented_client_reports_nothing_more(make_client: ClientFactory) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    async with make_client() as client:
        stop = instrument(client, meter_provider=provider)
        stop()
        await client.track("A", user_id=1, wait=True)
    data = reader.get_metrics_data()
    names = (
        {m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
        if data is not None
        else set()
    )
    assert "encharge.delivery.duration" not in names
    assert "encharge.events.delivered" not in names
    provider.shutdown()
