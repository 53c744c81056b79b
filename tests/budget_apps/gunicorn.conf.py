"""forkpool's hooks, the budget check's two included; PRELOAD=0 turns preload_app off."""

import os

from forkpool.gunicorn import on_exit, on_starting, post_fork, post_worker_init, pre_fork, when_ready, worker_exit  # noqa: F401

preload_app = os.environ.get("PRELOAD", "1") == "1"
