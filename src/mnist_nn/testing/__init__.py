"""Helpers for tests and benchmarks, as numpy.testing is: the photo-like test-image generator.

No runtime module imports it (a contract in pyproject.toml says so).
"""
