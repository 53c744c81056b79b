"""A gunicorn.conf.py that already has hooks of its own: each calls forkpool's in one line.

Each hook also writes a line to the file named by HOOK_LOG: its event, the
process it ran for, and how many pools that process has open right after
forkpool's hook (0 in the master after when_ready and in a worker after
worker_exit; the pool's size in a worker after post_fork, which opens it eagerly).
"""

import os

import forkpool
import forkpool.gunicorn
import forkpool.health
from forkpool.gunicorn import on_starting, post_worker_init, pre_fork, on_exit  # noqa: F401

preload_app = True


def _note(event, pid, detail):
    with open(os.environ["HOOK_LOG"], "a") as log:
        log.write(f"{event} {pid} {detail}\n")


def when_ready(server):
    forkpool.gunicorn.when_ready(server)
    _note("when_ready", os.getpid(), len(forkpool.health.stats()))


def post_fork(server, worker):
    forkpool.gunicorn.post_fork(server, worker)
    _note("post_fork", worker.pid, forkpool.get_pool().stats()["size"])


def worker_exit(server, worker):
    forkpool.gunicorn.worker_exit(server, worker)
    _note("worker_exit", worker.pid, len(forkpool.health.stats()))
