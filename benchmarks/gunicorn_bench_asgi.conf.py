"""Gunicorn settings of the suite benchmark's ASGI app: ``gunicorn -c benchmarks/gunicorn_bench_asgi.conf.py``.

benchmarks/bench_asgi_app.py under ``uvicorn_worker.UvicornWorker`` (uvicorn's "auto" event
loop and HTTP parser: uvloop and httptools when installed, else asyncio and h11; the result
files name the packages). Set by suite_bench through the environment, as for
gunicorn_bench.conf.py: BENCH_DB_MODE (pool | connect | floor), BENCH_BIND, BENCH_WORKERS,
BENCH_KEEPALIVE (uvicorn's keep-alive timeout) and, for the pool, DB_POOL_SIZE.
Only the pool mode imports forkpool's hooks (``asgi_post_fork``: detach what was inherited,
open nothing; the app's lifespan opens the worker's pool in its own event loop). Start-up
is recorded by the app's lifespan, not here (benchmarks.startup_probe).
"""

import os

_mode = os.environ.get("BENCH_DB_MODE", "pool")

wsgi_app = "benchmarks.bench_asgi_app:app"
bind = os.environ.get("BENCH_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("BENCH_WORKERS", "2"))
worker_class = "uvicorn_worker.UvicornWorker"
preload_app = False
accesslog = None  # uvicorn's access log is Gunicorn's: off, as for the WSGI servers
errorlog = "-"
loglevel = "warning"
timeout = 30
# Keep-alive off by default, as for the WSGI servers (gunicorn_bench.conf.py says why): uvicorn
# has no "close after the response" setting of its own, so suite_bench's load generator asks for
# it with `Connection: close` on every request (BENCH_KEEPALIVE > 0: persistent connections).
keepalive = int(os.environ.get("BENCH_KEEPALIVE", "0"))
graceful_timeout = 10
proc_name = f"bench-asgi-{_mode}"

if _mode == "pool":
    from forkpool.gunicorn import asgi_post_fork as post_fork  # noqa: F401
    from forkpool.gunicorn import on_exit, pre_fork, when_ready, worker_exit  # noqa: F401
