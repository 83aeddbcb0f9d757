"""Benchmark baselines (used by tools/bench.py)."""
