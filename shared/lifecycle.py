"""What a pre-forking server does with pools at each stage, whichever server it is.

- a master (Gunicorn arbiter, Celery main process) holds no connection: it
  closes whatever the application opened at import time (``preload_app``);
- a child detaches what it inherited, then opens its own pools eagerly, so a
  steady deployment holds exactly processes x pool size connections;
- a child closes its pools when it exits.
"""

from __future__ import annotations

import logging
import time

from .identity import set_process_role
from .registry import DEFAULT, after_fork_in_child, close_all, current_state, get_pool

logger = logging.getLogger("forkpool.lifecycle")

# Celery kills a child whose worker_process_init takes 4 s: stay well inside it.
DEFAULT_OPEN_TIMEOUT = 2.5


def release_in_master(where: str) -> None:
    """Close every pool and client a master process has, logging what it found."""
    state = current_state()
    open_pools = [name for name, pool in state.pools.items() if not pool.closed]
    if open_pools or state.redis is not None:
        logger.info("%s: closing pools %s opened in the master; masters hold no connections", where, open_pools)
    close_all()


def start_in_child(role: str, timeout: float = DEFAULT_OPEN_TIMEOUT) -> bool:
    """Detach inherited pools, then open this process's own; True when all are full.

    Bounded by `timeout` in all: a database that is down or slow must not stop
    the process from starting (its pools keep retrying in the background).
    """
    set_process_role(role)
    after_fork_in_child()
    deadline = time.monotonic() + timeout
    names = {DEFAULT, *current_state().settings}
    full = True
    for name in sorted(names):
        pool = get_pool(name)
        full = pool.open(wait=True, timeout=max(deadline - time.monotonic(), 0.0)) and full
    if not full:
        logger.warning("%s: pools not full after %.1f s; they keep connecting in the background", role, timeout)
    return full


def stop_in_child() -> None:
    """Close this process's pools and client: its server sessions end now, not at TCP timeout."""
    close_all()
