"""Gunicorn server hooks that keep one pool per worker process and none in the master.

In a ``gunicorn.conf.py``, either take them as they are::

    from forkpool.gunicorn import (on_starting, when_ready, pre_fork, post_fork, post_worker_init,
                                   worker_exit, on_exit)

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

The connection budget (docs/sizing.md): ``on_starting`` checks the share of
this server against each PostgreSQL server's slots, and its threads against
every pool's bound, from ``budget.held_pools()``; it refuses to start in one
line on stderr (status 1) what does not fit. Without ``preload_app`` the app's
own pools exist only in the workers: ``post_worker_init`` checks them in the
first worker, and a refusal halts Gunicorn (status 3).

Async workers (``worker_class = "uvicorn_worker.UvicornWorker"``) take
``asgi_on_starting`` and ``asgi_post_fork`` instead of ``on_starting`` and
``post_fork`` (the others are the same): role ``asgi``, and nothing opened at
fork, since asyncio pools belong to the worker's event loop, which starts
later; the app's lifespan opens them (``await forkpool.open_async_pools()``)
and closes them (``await forkpool.close_async_pools()``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ._metrics_dir import mark_dead, prepare_directory
from ._servers import (
    DEFAULT_OPEN_TIMEOUT,
    release_in_master,
    start_async_child,
    start_in_child,
    stop_in_child,
)
from .budget import say, startup_check
from .errors import ConfigError
from .identity import process_role, set_process_role

WEB_ROLE = "web"
ASGI_ROLE = "asgi"
ROLE_ENV = "PROCESS_ROLE"
WORKER_BOOT_ERROR = 3  # gunicorn.arbiter.Arbiter.WORKER_BOOT_ERROR: a worker exiting with it halts the arbiter


def on_starting(server: Any) -> None:
    _starting(server, WEB_ROLE, server.cfg.threads)


def asgi_on_starting(server: Any) -> None:
    # An async worker serves many requests at once from one pool: no thread needs its own connection.
    _starting(server, ASGI_ROLE, 1)


def _starting(server: Any, role: str, threads: int) -> None:
    set_process_role(f"{role}-master")
    prepare_directory()
    # With preload_app, Gunicorn imports the app in Arbiter.setup(), before start() calls
    # on_starting (gunicorn/arbiter.py): its protected pools are known here. Without it the
    # master never imports the app: only what the environment and gunicorn.conf.py set is
    # known, and the first worker checks the rest (post_worker_init).
    preloaded = bool(getattr(server.cfg, "preload_app", False))
    try:
        startup_check(role, server.cfg.workers, threads, app_loaded=preloaded)
    except ConfigError as exc:
        sys.exit(f"forkpool: {exc}")  # the one line, on stderr; Gunicorn exits with status 1


def post_worker_init(worker: Any) -> None:
    """Without preload_app: the first worker, app loaded, checks the pools the app made.

    Why here and not in the master: the master never imports the app, so only a worker
    knows its protected pools (an import in the master would be preload_app's fork
    hazards for a check). The first worker (``age`` 1) checks, once per arbiter; a
    refusal exits it with Gunicorn's WORKER_BOOT_ERROR (3), on which the arbiter halts
    the whole server with status 3 (``Arbiter.reap_workers``) instead of respawning.
    """
    cfg = worker.cfg
    if getattr(cfg, "preload_app", False) or getattr(worker, "age", 1) != 1:
        return  # the master checked (preload_app), or the first worker already did
    # A gthread worker (Gunicorn turns a sync worker with threads > 1 into one) serves
    # cfg.threads requests at once; sync, async and uvicorn workers' pools serve one
    # thread each (an async worker shares its pool between tasks).
    threads = cfg.threads if type(worker).__name__ == "ThreadWorker" else 1
    try:
        startup_check(process_role(), cfg.workers, threads)
    except ConfigError as exc:
        say(str(exc))
        sys.exit(WORKER_BOOT_ERROR)


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
