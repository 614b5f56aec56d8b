"""Errors, atomic writes, registries, device choice, headless figures and the version: what every room uses."""
