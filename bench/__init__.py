"""Benchmarks, run by hand, never by `make test`: `make bench` or `python -m bench` (see __main__)."""
