from forkpool.gunicorn import asgi_post_fork as post_fork  # noqa: F401
from forkpool.gunicorn import on_exit, pre_fork, when_ready, worker_exit  # noqa: F401

preload_app = True
max_requests = 10
max_requests_jitter = 3
worker_class = "uvicorn_worker.UvicornWorker"
