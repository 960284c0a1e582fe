"""Benchmarks. Run from the repo root: `.venv/bin/python -m bench.run_b2l` (see README.md)."""
