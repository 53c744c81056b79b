from forkpool.gunicorn import on_exit, post_fork, pre_fork, when_ready, worker_exit  # noqa: F401

preload_app = True
max_requests = 15
max_requests_jitter = 5
