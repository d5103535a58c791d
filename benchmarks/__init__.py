"""Benchmarks of asynclock: uncontended lock cost against raw Redis round trips.

``python -m benchmarks`` prints the report; ``pytest benchmarks/`` runs the same
measurements under pytest-benchmark. See ``benchmarks/README.md``.
"""
