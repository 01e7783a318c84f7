"""Benchmarks. Each prints a Markdown block for BENCHMARKS.md."""
