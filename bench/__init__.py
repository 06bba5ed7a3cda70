"""Benchmarks, run by hand (`python bench/bench_match.py`)."""
