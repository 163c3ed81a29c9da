"""Reproducible side-by-side performance comparisons of mlwarden (not timed tests).

Run everything with ``python3 -m benchmarks.run [--quick]`` from the repository root; see
``benchmarks/README.md``.
"""
