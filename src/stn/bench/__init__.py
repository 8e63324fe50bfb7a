"""Throughput benchmarks (not timed tests): `python -m stn.bench.transformer`, `python -m stn.bench.data`."""
