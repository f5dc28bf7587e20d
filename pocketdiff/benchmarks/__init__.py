"""Benchmarks and quality evaluation."""
