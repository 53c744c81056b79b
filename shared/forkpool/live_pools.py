"""Every live Pool object of this process, and what fork does to them.

Kept apart from pool.py so the pool reads as a pool; this module does not
import it. Before fork the parent holds every pool's lock (the child inherits
consistent deques); in the child, each inherited pool gets fresh locks and lets
go of its connections without network I/O (``Pool.detach_after_fork``).
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

from . import fork_quiet
from ._process import home, install_fork_hooks

logger = logging.getLogger("forkpool.pool")


def all_pools() -> weakref.WeakSet[Any]:
    """Every live Pool object of this process, named or not (the fork hook detaches them all)."""
    holder = home()
    pools = getattr(holder, "all_pools", None)
    if pools is None:
        pools = holder.all_pools = weakref.WeakSet()
    return pools


def _hold_pool_locks() -> None:
    # Before fork, in the parent: hold every pool lock so the child inherits each
    # pool's deques consistent (no connection half-way between idle and in use).
    # Bounded: a lock not free within a second is left alone; the child never takes it.
    # forkpool's threads end first (fork_quiet.py): a maintainer must not be left waiting for
    # a lock held here, and before-fork hooks run newest first, so fork_quiet's own may come later.
    fork_quiet.end_threads()
    held = []
    for pool in list(all_pools()):
        lock = getattr(pool, "_lock", None)  # an asyncio pool has none: its loop's thread is its lock
        if lock is not None and lock.acquire(timeout=1.0):
            held.append(lock)
    home().held_at_fork = held


def _release_pool_locks() -> None:
    for lock in getattr(home(), "held_at_fork", ()):
        lock.release()
    home().held_at_fork = []


def detach_inherited_pools() -> None:
    # In the child: only the forking thread exists. Each pool gets fresh locks and
    # lets go of its connections (detach_after_fork), whether or not a registry knows it.
    home().held_at_fork = []
    pid = os.getpid()
    for pool in list(all_pools()):
        if pool.pid != pid:
            try:
                pool.detach_after_fork()
            except Exception:  # an at-fork hook must never break the fork
                logger.warning("%r: detaching after fork failed", pool, exc_info=True)


install_fork_hooks(
    "pool", before=_hold_pool_locks, after_in_parent=_release_pool_locks, after_in_child=detach_inherited_pools
)
