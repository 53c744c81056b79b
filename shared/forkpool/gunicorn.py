"""Gunicorn server hooks that keep one pool per worker process and none in the master.

In a ``gunicorn.conf.py``, either take them as they are::

    from forkpool.gunicorn import when_ready, pre_fork, post_fork, worker_exit, on_exit

or call them from hooks you already have, one line each::

    import forkpool.gunicorn

    def post_fork(server, worker):
        forkpool.gunicorn.post_fork(server, worker)
        ...  # your own

Order (gunicorn/arbiter.py): with ``preload_app`` the application is imported
in the master before ``when_ready``; ``pre_fork`` runs in the master before each
fork, ``post_fork`` in the child before it loads (or uses) the application,
``worker_exit`` in the child as it exits (not after SIGKILL: then the server
ends the sessions when the socket closes), ``on_exit`` in the master at the end.
None of them imports gunicorn: they only read ``server.cfg`` and ``worker.pid``.

Async workers (``worker_class = "uvicorn_worker.UvicornWorker"``) take
``asgi_on_starting`` and ``asgi_post_fork`` instead of ``on_starting`` and
``post_fork`` (the others are the same): role ``asgi``, and nothing opened at
fork, since asyncio pools belong to the worker's event loop, which starts
later; the app's lifespan opens them (``await forkpool.open_async_pools()``)
and closes them (``await forkpool.close_async_pools()``).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from .budget import startup_check
from .errors import ConfigError
from .identity import set_process_role
from .lifecycle import DEFAULT_OPEN_TIMEOUT, release_in_master, start_async_child, start_in_child, stop_in_child
from .metrics_dir import mark_dead, prepare_directory

WEB_ROLE = "web"
ASGI_ROLE = "asgi"
ROLE_ENV = "PROCESS_ROLE"


def on_starting(server: Any) -> None:
    _starting(server, WEB_ROLE, server.cfg.threads)


def asgi_on_starting(server: Any) -> None:
    # An async worker serves many requests at once from one pool: no thread needs its own connection.
    _starting(server, ASGI_ROLE, 1)


def _starting(server: Any, role: str, threads: int) -> None:
    set_process_role(f"{role}-master")
    prepare_directory()
    try:
        startup_check(role, server.cfg.workers, threads)
    except ConfigError as exc:
        logging.getLogger("forkpool.budget").error("%s", exc)
        sys.exit(f"forkpool: {exc}")


def when_ready(server: Any) -> None:
    release_in_master("gunicorn master")


def pre_fork(server: Any, worker: Any) -> None:
    # Cheap when the master holds nothing; catches a pool opened since when_ready.
    release_in_master("gunicorn master")


def post_fork(server: Any, worker: Any) -> None:
    role = os.environ.get(ROLE_ENV) or WEB_ROLE
    start_in_child(role, timeout=DEFAULT_OPEN_TIMEOUT)


def asgi_post_fork(server: Any, worker: Any) -> None:
    role = os.environ.get(ROLE_ENV) or ASGI_ROLE
    start_async_child(role)


def worker_exit(server: Any, worker: Any) -> None:
    stop_in_child()


def on_exit(server: Any) -> None:
    release_in_master("gunicorn master")


def child_exit(server: Any, worker: Any) -> None:
    # In the master, after reaping: the worker's gauges must not outlive it.
    mark_dead(worker.pid)
