"""Deterministic datasets for examples, tests and benchmarks (no downloads)."""
