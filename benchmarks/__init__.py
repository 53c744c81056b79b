"""Benchmarks for forkpool: they print figures and write result files, they never assert timings.

python -m benchmarks.pool_bench            # the pool against its peers (see pool_bench.py)
python -m benchmarks.suite_bench           # the suite end to end: Gunicorn and Celery (see suite_bench.py)
python -m benchmarks.hotpath               # where the pool's checkout time goes
"""
