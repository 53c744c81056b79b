from forkpool.gunicorn import on_exit, on_starting, post_fork, pre_fork, when_ready, worker_exit  # noqa: F401

worker_class = "gevent"
worker_connections = 50
