"""The one place this process keeps its pools, whatever imports this package.

The state lives in a module object registered in ``sys.modules`` under a
fixed name, not in this module's globals: ``importlib.reload`` of any of our
modules, or the same file imported twice under two names (``shared.registry``
and ``registry`` via a second sys.path entry), would otherwise start a second,
empty registry and open a second set of connections in the same process.
"""

from __future__ import annotations

import sys
import threading
import types
import weakref
from typing import Any

_HOME = "_forkpool_process_state"


class ProcessState:
    """Pools, settings and clients of one process; replaced wholesale in a forked child."""

    def __init__(self, pid: int) -> None:
        # Guards creation and removal of pools and clients (not their use).
        self.lock = threading.RLock()
        self.pid = pid
        self.pools: dict[str, Any] = {}  # name -> Pool, created by get_pool()
        self.settings: dict[str, Any] = {}  # name -> PoolSettings from configure()
        self.redis: Any = None  # this process's redis.Redis, created by get_redis()
        self.manager_counts = {"evicted": 0, "closed_idle": 0}  # see manager.py
        self.idle_closer: Any = None  # the thread closing idle pools, when enabled


def home() -> types.ModuleType:
    """The process-wide holder: created once, found again by every later import."""
    holder = sys.modules.get(_HOME)
    if holder is None:
        candidate = types.ModuleType(_HOME, "forkpool's per-process state; see shared/process_state.py")
        candidate.current = None  # type: ignore[attr-defined]
        candidate.all_pools = weakref.WeakSet()  # type: ignore[attr-defined]
        candidate.fork_hook_installed = False  # type: ignore[attr-defined]
        holder = sys.modules.setdefault(_HOME, candidate)
    return holder


def all_pools() -> "weakref.WeakSet[Any]":
    """Every live Pool object of this process, named or not (the fork hook detaches them all)."""
    return home().all_pools  # type: ignore[no-any-return]
