"""The benchmark harness runs (timings are the benchmark's business, not the tests')."""

from __future__ import annotations

from benchmarks import enqueue


def test_enqueue_benchmark_runs() -> None:
    results = enqueue.measure(events=200, repeats=1)
    assert set(results) == set(enqueue.CANDIDATES)
    for row in results.values():
        assert row["median_us"] > 0
        assert row["p99_us"] >= row["median_us"]
