"""Benchmarks. Run from the repo root: `PYTHONPATH=.:plugins .venv/bin/python -m bench.run_b2l` (see README.md)."""
