"""Benchmark commands (not tests): each module prints a table, e.g. ``python -m scratchlm.bench.attention``.

Timings depend on the machine and its load; the commands report what they measured and how.
"""
