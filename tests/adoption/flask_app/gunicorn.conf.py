from forkpool.gunicorn import on_starting, post_worker_init, when_ready, pre_fork, post_fork, worker_exit, on_exit  # noqa: F401
