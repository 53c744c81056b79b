"""Gunicorn server hooks that keep one pool per worker process and none in the master.

Use from a ``gunicorn.conf.py``::

    from shared.gunicorn_hooks import (on_starting, when_ready, pre_fork, post_fork,
                                       worker_exit, child_exit, on_exit)

Order (gunicorn/arbiter.py): with ``preload_app`` the application is imported
in the master before ``when_ready``; ``pre_fork`` runs in the master before each
fork, ``post_fork`` in the child before it loads (or uses) the application,
``worker_exit`` in the child as it exits (not after SIGKILL: then the server
ends the sessions when the socket closes), ``on_exit`` in the master at the end.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from . import metrics
from .budget import startup_check
from .errors import ConfigError
from .identity import set_process_role
from .lifecycle import DEFAULT_OPEN_TIMEOUT, release_in_master, start_in_child, stop_in_child

WEB_ROLE = "web"


def on_starting(server: Any) -> None:
    set_process_role(f"{WEB_ROLE}-master")
    metrics.prepare_directory()
    try:
        startup_check(WEB_ROLE, server.cfg.workers, server.cfg.threads)
    except ConfigError as exc:
        logging.getLogger("forkpool.budget").error("%s", exc)
        sys.exit(f"forkpool: {exc}")


def when_ready(server: Any) -> None:
    release_in_master("gunicorn master")


def pre_fork(server: Any, worker: Any) -> None:
    # Cheap when the master holds nothing; catches a pool opened since when_ready.
    release_in_master("gunicorn master")


def post_fork(server: Any, worker: Any) -> None:
    role = os.environ.get("PROCESS_ROLE") or WEB_ROLE
    start_in_child(role, timeout=DEFAULT_OPEN_TIMEOUT)


def worker_exit(server: Any, worker: Any) -> None:
    stop_in_child()


def on_exit(server: Any) -> None:
    release_in_master("gunicorn master")


def child_exit(server: Any, worker: Any) -> None:
    # In the master, after reaping: the worker's gauges must not outlive it.
    metrics.mark_dead(worker.pid)
