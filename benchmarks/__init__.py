"""Side-by-side throughput and latency benchmarks (issue 6): ``python -m benchmarks.run``."""
