"""Gunicorn settings of the suite benchmark's web app: ``gunicorn -c benchmarks/gunicorn_bench.conf.py``.

Set by suite_bench through the environment: BENCH_DB_MODE (pool | connect | floor),
BENCH_BIND, BENCH_WORKERS, BENCH_THREADS (> 1: gthread), BENCH_KEEPALIVE and, for the pool,
DB_POOL_SIZE.
Only the pool mode imports the shared hooks (one pool per worker, none in the master);
every mode times its post_fork into BENCH_STARTUP_FILE (benchmarks.startup_probe).
"""

import os
import time

from benchmarks.startup_probe import pool_state, record_startup

_mode = os.environ.get("BENCH_DB_MODE", "pool")
_threads = int(os.environ.get("BENCH_THREADS", "1"))
_worker_class = "gthread" if _threads > 1 else "sync"

wsgi_app = "benchmarks.bench_app:app"
bind = os.environ.get("BENCH_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("BENCH_WORKERS", "2"))
threads = _threads
worker_class = _worker_class
preload_app = False
accesslog = None  # an access log line per request would cost every variant the same, and add noise
errorlog = "-"
loglevel = "warning"
timeout = 30
# Keep-alive off by default (BENCH_KEEPALIVE seconds turns it on): with a few persistent client
# connections opened in a burst, the gthread workers' accept race often hands every one of them
# to a single worker, which then serves alone at about half the rate for the connections' life;
# that lottery, drawn anew by each load run, would swamp the differences measured here.
keepalive = int(os.environ.get("BENCH_KEEPALIVE", "0"))
graceful_timeout = 10
proc_name = f"bench-{_worker_class}-{_mode}"

if _mode == "pool":
    from forkpool.gunicorn import on_exit, pre_fork, when_ready, worker_exit  # noqa: F401
    from forkpool.gunicorn import post_fork as _open_pool

    def post_fork(server, worker):  # Gunicorn's hook signature
        started = time.perf_counter()
        _open_pool(server, worker)  # detach anything inherited, open this worker's pool, wait until full
        record_startup("gunicorn", _mode, started, worker_class=_worker_class, **pool_state())

else:

    def post_fork(server, worker):
        # Nothing to open: connect opens per request, the floor on each thread's first request.
        record_startup(
            "gunicorn", _mode, time.perf_counter(), worker_class=_worker_class, pool_size=0, pool_min=0, full=True
        )
