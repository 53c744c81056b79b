"""Pools keyed by configuration, with limits for processes that reach many databases.

``registry.pool_for(dsn, ...)`` returns the same pool for the same configuration
and a new one for another; this module holds the policies it applies, on the
registry's per-process state. Two limits, both off by default:

- ``DB_MAX_POOLS``: at most this many pools per process; making room evicts the
  least recently used *idle* pool (never one with a connection in use or a
  caller waiting); when none is idle, creating another pool fails clearly.
- ``DB_POOL_IDLE_CLOSE``: close pools nobody used for this many seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from typing import Any

from . import fork_quiet
from .errors import ConfigError, PoolError
from .settings import PoolSettings, _parse_seconds, env_int

logger = logging.getLogger("forkpool.manager")

MAX_POOLS_ENV = "DB_MAX_POOLS"
IDLE_CLOSE_ENV = "DB_POOL_IDLE_CLOSE"
# Keys hash the whole configuration, password included, so a DSN that differs
# only in its password gets its own pool; the salt keeps the hash from being a
# handle on the password.
_SALT = os.urandom(16)


def max_pools() -> int:
    return env_int(MAX_POOLS_ENV, 0, minimum=0)


def idle_close_seconds() -> float:
    raw = os.environ.get(IDLE_CLOSE_ENV, "").strip()
    value = _parse_seconds(IDLE_CLOSE_ENV, raw) if raw else 0.0
    return max(value, 0.0)


def config_key(settings: PoolSettings) -> str:
    """``<dsn without password>#<8 hex>``: readable in stats, distinct per configuration."""
    digest = hashlib.blake2b(repr(sorted(vars(settings).items())).encode(), key=_SALT, digest_size=4)
    return f"{settings.identity}#{digest.hexdigest()}"


def is_idle(pool: Any) -> bool:
    snapshot = pool.stats()
    return bool(snapshot["in_use"] == 0 and snapshot["waiting"] == 0)


def make_room(state: Any) -> None:
    """Called with the registry lock held, before a new pool is created."""
    limit = max_pools()
    if not limit:
        return
    open_pools = {name: p for name, p in state.pools.items() if not p.closed}
    if len(open_pools) < limit:
        return
    idle = sorted((p.last_active, name) for name, p in open_pools.items() if is_idle(p))
    if not idle:
        raise PoolError(f"{MAX_POOLS_ENV}={limit} pools are open in this process and none is idle")
    _, victim = idle[0]
    _retire(state, victim, "evicted")


def close_idle_pools(state: Any, older_than: float) -> None:
    """Close pools unused for `older_than` seconds (none with a connection in use)."""
    now = time.monotonic()
    with state.lock:
        stale = [
            name for name, p in state.pools.items() if not p.closed and now - p.last_active > older_than and is_idle(p)
        ]
        for name in stale:
            _retire(state, name, "closed_idle")


def _retire(state: Any, name: str, counter: str) -> None:
    pool = state.pools.pop(name)
    state.manager_counts[counter] += 1
    logger.info("%r: %s", pool, counter.replace("_", " "))
    pool.close()


def start_idle_closer(state: Any) -> None:
    """One thread per process, when DB_POOL_IDLE_CLOSE is set (called with the registry lock held)."""
    if not idle_close_seconds() or state.idle_closer is not None:
        return
    state.idle_closer = IdleCloser(state)
    state.idle_closer.start()


class IdleCloser:
    """The sweep of DB_POOL_IDLE_CLOSE. Its thread is not alive across a fork (fork_quiet.py)."""

    def __init__(self, state: Any) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set to end the thread for a fork
        self._thread: threading.Thread | None = None  # under _lock: the running thread or None
        self._paused = fork_quiet.forking()
        fork_quiet.register(self)

    def start(self) -> None:
        with self._lock:
            self._spawn_if_due()

    def _spawn_if_due(self) -> None:
        # Called with _lock held.
        if self._thread is None and not self._paused and self._state.pid == os.getpid():
            self._thread = threading.Thread(target=self._run, name="forkpool-idle-closer", daemon=True)
            self._thread.start()

    def pause_for_fork(self) -> threading.Thread | None:
        with self._lock:
            self._paused = True
            if self._thread is not None:
                self._stop.set()
            return self._thread

    def resume_after_fork(self) -> None:
        with self._lock:
            self._paused = False
            self._spawn_if_due()

    def _run(self) -> None:
        state = self._state
        try:
            interval = idle_close_seconds()
        except ConfigError:
            interval = 1.0  # read again below, where a bad value stops the thread
        while state.pid == os.getpid():
            self._stop.wait(min(1.0, interval / 2))
            with self._lock:
                if self._paused:
                    self._stop.clear()
                    self._thread = None
                    return
            try:
                interval = idle_close_seconds()  # read again: turning it off stops the thread
            except ConfigError:
                interval = 0.0
            if not interval:
                with state.lock:
                    state.idle_closer = None
                with self._lock:
                    self._thread = None
                return
            close_idle_pools(state, interval)
