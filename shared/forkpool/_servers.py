"""What a pre-forking server does with pools at each stage, whichever server it is.

- a master (Gunicorn arbiter, Celery main process) holds no connection: it
  closes whatever the application opened at import time (``preload_app``);
- a child detaches what it inherited, then opens its own pools eagerly, so a
  steady deployment holds exactly processes x pool size connections;
- a child closes its pools (and every ``per_process`` instance) when it exits.

An async worker (``uvicorn_worker.UvicornWorker``) differs in one step: its
asyncio pools belong to the event loop that opens them, and that loop starts
after the server's hooks ran, so the app's lifespan opens and closes them.
"""

from __future__ import annotations

import logging
import time

from . import _protect as protection
from ._metrics_dir import multiprocess_dir
from ._process import after_fork_in_child, home
from ._registry import close_all, get_pool, pool_names, process_pools
from .identity import set_process_role

logger = logging.getLogger("forkpool.lifecycle")

# Celery kills a child whose worker_process_init takes 4 s: stay well inside it.
DEFAULT_OPEN_TIMEOUT = 2.5


def release_in_master(where: str) -> None:
    """Close every pool, client and per_process instance a master has, saying what it found."""
    # peek(), not open_pools(): asking must not create the registry's instance and then report it.
    state = process_pools.peek()
    names = sorted(name for name, pool in state.pools.items() if not pool.closed) if state is not None else []
    if names or home().created or protection.protected():
        logger.info(
            "%s: closing %s opened in the master; masters hold no connections",
            where,
            f"pools {names}" if names else "per-process instances",
        )
    close_all()


def start_in_child(role: str, timeout: float = DEFAULT_OPEN_TIMEOUT) -> bool:
    """Detach inherited pools, then open this process's own; True when all are full.

    Bounded by `timeout` in all: a database that is down or slow must not stop
    the process from starting (its pools keep retrying in the background).
    """
    set_process_role(role)
    after_fork_in_child()
    if multiprocess_dir() is not None:
        # The suite collects metrics: importing the exporter registers it with every pool.
        from . import metrics
    deadline = time.monotonic() + timeout
    full = True
    for name in pool_names():
        pool = get_pool(name)
        full = pool.open(wait=True, timeout=max(deadline - time.monotonic(), 0.0)) and full
    full = protection.warm_all(deadline) and full
    if multiprocess_dir() is not None:
        from . import metrics

        metrics.start_exporter()  # protected pools have no maintainer thread to publish their gauges
    if not full:
        logger.warning("%s: pools not full after %.1f s; they keep connecting in the background", role, timeout)
    return full


def start_async_child(role: str) -> None:
    """In an async worker after fork: detach what was inherited, open nothing.

    The worker's event loop does not exist yet: the app's lifespan startup opens
    the pools in it (``await open_async_pools()``), bounded like ``start_in_child``.
    """
    set_process_role(role)
    after_fork_in_child()
    if multiprocess_dir() is not None:
        from . import metrics  # the exporter registers with every pool, async ones too

        metrics.start_exporter()  # and publishes the protected ones


def stop_in_child() -> None:
    """Close this process's pools and per_process instances: its sessions end now, not at TCP timeout."""
    close_all()
