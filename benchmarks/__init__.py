"""Benchmarks: each measures raytrain against a baseline in the same run and prints ratios."""
