"""Benchmarks for forkpool: they print figures and write result files, they never assert timings.

    python -m benchmarks.pool_bench            # the pool against its peers (see pool_bench.py)
"""
