"""Benchmarks of encharge_async (run with `make bench`); see docs/performance.md."""
