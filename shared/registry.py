"""This process's pools, one per name: ``get_pool``, ``configure``, ``close_all`` and fork.

A pool is created on first use in the process that uses it. After ``fork()``
the child detaches everything it inherited (no network I/O: the parent still
owns those sessions) and builds its own pools on first use.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any, Mapping

from . import manager
from .errors import ConfigError
from .pool import Pool
from .process_state import ProcessState, all_pools, home
from .settings import PoolSettings, build_settings, settings_from_env

logger = logging.getLogger("forkpool.registry")

DEFAULT = "default"
_HOLDER = home()
if not hasattr(_HOLDER, "init_lock"):
    _HOLDER.init_lock = threading.Lock()  # type: ignore[attr-defined]


def get_pool(name: str = DEFAULT) -> Pool:
    """This process's pool called `name`: created on first use, the same object after."""
    state = _HOLDER.current
    if state is not None and state.pid == os.getpid():
        pool = state.pools.get(name)
        if pool is not None and not pool.closed:
            return pool
    return _create_pool(name)


def configure(
    name: str = DEFAULT,
    *,
    dsn: str | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    timeout: float | None = None,
    max_waiting: int | None = None,
    max_lifetime: float | None = None,
    max_idle: float | None = None,
    check_idle: float | None = None,
    leak_timeout: float | None = None,
    connect_timeout: float | None = None,
    connect_kwargs: Mapping[str, Any] | None = None,
) -> PoolSettings:
    """Register the settings of pool `name` before its first use; returns them validated.

    Unset keywords keep their defaults, which for the default pool come from the
    environment (DATABASE_URL, DB_POOL_*). Raises ConfigError on a bad value,
    or when the pool is already open in this process with other settings.
    """
    if name == DEFAULT:
        base = build_settings(**settings_from_env())
    else:
        base = PoolSettings()
    settings = build_settings(
        base, dsn=dsn, min_size=min_size, max_size=max_size, timeout=timeout,
        max_waiting=max_waiting, max_lifetime=max_lifetime, max_idle=max_idle,
        check_idle=check_idle, leak_timeout=leak_timeout, connect_timeout=connect_timeout,
        connect_kwargs=connect_kwargs,
    )
    state = current_state()
    with state.lock:
        open_pool = state.pools.get(name)
        if open_pool is not None and not open_pool.closed and open_pool.settings != settings:
            raise ConfigError(f"pool {name!r} is already open with other settings; close it before reconfiguring")
        state.settings[name] = settings
    return settings


def close_all() -> None:
    """Close every pool and the Redis client of this process (worker exit, shutdown)."""
    state = current_state()
    with state.lock:
        state.pools.clear()
        client, state.redis = state.redis, None
    pid = os.getpid()
    for pool in list(all_pools()):
        if pool.pid == pid:
            pool.close()
    if client is not None:
        client.close()


def all_stats() -> list[dict[str, Any]]:
    """`Pool.stats()` of every pool this process has open, by name."""
    state = current_state()
    with state.lock:
        pools = sorted(state.pools.items())
    return [pool.stats() for _, pool in pools if not pool.closed]


def after_fork_in_child() -> None:
    """Drop every pool and client inherited from the parent; no network I/O. Idempotent.

    Registered with ``os.register_at_fork``; the Gunicorn and Celery hooks call
    it too, for forks made by C code that Python's hook does not see.
    """
    pid = os.getpid()
    _HOLDER.init_lock = threading.Lock()  # may have been held by a parent thread at fork time
    inherited = _HOLDER.current
    if inherited is not None and inherited.pid != pid:
        _HOLDER.current = _state_for_child(inherited, pid)
    for pool in list(all_pools()):
        if pool.pid != pid:
            pool.detach_after_fork()


def current_state() -> ProcessState:
    """This process's state; the pid check catches a fork no hook reported."""
    state = _HOLDER.current
    pid = os.getpid()
    if state is not None and state.pid == pid:
        return state
    lock = _HOLDER.init_lock
    if not lock.acquire(timeout=5):
        # Held at fork time by a parent thread that does not exist here.
        lock = _HOLDER.init_lock = threading.Lock()
        lock.acquire()
    try:
        state = _HOLDER.current
        if state is None:
            _HOLDER.current = state = ProcessState(pid)
        elif state.pid != pid:
            after_fork_in_child()
            state = _HOLDER.current
        return state
    finally:
        lock.release()


def _state_for_child(inherited: ProcessState, pid: int) -> ProcessState:
    # Settings registered before the fork (configure() at import time) still apply.
    state = ProcessState(pid)
    state.settings = dict(inherited.settings)
    if inherited.redis is not None:
        _forget_inherited_redis(inherited.redis)
    return state


def _forget_inherited_redis(client: Any) -> None:
    # redis-py closes a foreign-pid socket without shutdown(): nothing reaches the
    # parent's connection. reset() drops the inherited connections now.
    try:
        client.connection_pool.reset()
    except Exception:  # noqa: BLE001 - best effort; the GC would drop them anyway
        logger.debug("could not reset an inherited Redis pool", exc_info=True)


def _create_pool(name: str) -> Pool:
    state = current_state()
    with state.lock:
        # Invariant: at most one open Pool per name per process. Threads racing on
        # first use serialise here, and the losers find the winner's pool.
        pool = state.pools.get(name)
        if pool is None or pool.closed:
            settings = _settings_for(name, state)
            manager.make_room(state)
            manager.start_idle_closer(state)
            pool = Pool(settings, name)
            state.pools[name] = pool
            pool.open(wait=False)  # no I/O here: the maintainer thread connects
        return pool


def _settings_for(name: str, state: ProcessState) -> PoolSettings:
    settings = state.settings.get(name)
    if settings is not None:
        return settings
    if name == DEFAULT:
        return build_settings(**settings_from_env())
    raise ConfigError(f"pool {name!r} is not configured: call shared.configure({name!r}, dsn=...) first")


def _before_fork() -> None:
    # Hold every pool lock across fork so the child inherits each pool's deques
    # in a consistent state (no connection half-way between idle and in use).
    held = []
    for pool in list(all_pools()):
        lock = pool._lock
        if lock.acquire(timeout=1.0):
            held.append(lock)
    _HOLDER.held_at_fork = held  # type: ignore[attr-defined]


def _after_fork_in_parent() -> None:
    for lock in getattr(_HOLDER, "held_at_fork", ()):
        lock.release()
    _HOLDER.held_at_fork = []  # type: ignore[attr-defined]


def _after_fork_hook_in_child() -> None:
    _HOLDER.held_at_fork = []  # type: ignore[attr-defined]
    try:
        after_fork_in_child()
    except Exception:  # noqa: BLE001 - an at-fork hook must never break the fork
        logger.exception("forkpool: detaching inherited pools failed")


def _close_at_exit() -> None:
    # Plain scripts: end the sessions with a proper Terminate, not a dropped socket.
    # (Celery children leave with os._exit(): their worker_process_shutdown closes instead.)
    try:
        close_all()
    except Exception:  # noqa: BLE001 - nothing may break interpreter exit
        logger.debug("closing pools at exit failed", exc_info=True)


if not getattr(_HOLDER, "fork_hook_installed", False):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_hook_in_child,
    )
    atexit.register(_close_at_exit)
    _HOLDER.fork_hook_installed = True  # type: ignore[attr-defined]
