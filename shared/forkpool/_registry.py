"""This process's pools, one per name: ``get_pool``, ``configure``, ``pool_for``, ``close_all``.

The pools of a process are one ``per_process`` instance (``ProcessPools``):
created on first use in the process that uses it; in a forked child the
inherited one is detached (no network I/O, no lock) and the child builds its
own on first use. Settings registered with ``configure()`` are configuration,
not connections: they are process-independent and a child keeps them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from . import _protect as protection
from . import manager
from ._pool import Pool

# after_fork_in_child, re-exported as forkpool.after_fork_in_child: the one routine a forked child
# runs; the pools, protected objects and others add their part to it when their modules load.
from ._process import after_fork_in_child, home, notice_fork, per_process  # noqa: F401
from ._process import close_all as close_every_instance
from .errors import ConfigError
from .live_pools import all_pools
from .settings import PoolSettings, build_settings, settings_from_env

logger = logging.getLogger("forkpool.registry")

DEFAULT = "default"


class ProcessPools:
    """The named pools of one process, and what the pool manager's limits closed."""

    def __init__(self) -> None:
        # Guards creation and removal of pools (not their use).
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self.pools: dict[str, Pool] = {}
        self.manager_counts = {"evicted": 0, "closed_idle": 0}  # see manager.py
        self.idle_closer: manager.IdleCloser | None = None

    def detach_inherited(self) -> None:
        # In a forked child, with no lock taken (see per_process): the pools themselves
        # were detached by live_pools' at-fork hook; dropping them here is all that is left.
        for pool in list(self.pools.values()):
            pool.detach_after_fork()
        self.pools = {}

    def close(self) -> None:
        with self.lock:
            pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            pool.close()


process_pools = per_process(
    ProcessPools, detach=ProcessPools.detach_inherited, close=ProcessPools.close, key="forkpool.pools"
)


def configured() -> dict[str, PoolSettings]:
    """Settings registered with configure(), by pool name; kept across fork and reload."""
    holder = home()
    if not hasattr(holder, "configured"):
        holder.configured = {}
    return holder.configured


def size_sources() -> dict[str, str]:
    """Where a configured pool's max_size was set in code (``configure(max_size=8)``), by pool name.

    Read by the budget check to say where each pool's size comes from; a name
    absent here took its size from the environment or the default.
    """
    holder = home()
    if not hasattr(holder, "size_sources"):
        holder.size_sources = {}
    return holder.size_sources


def get_pool(name: str = DEFAULT) -> Pool:
    """This process's pool called `name`: created on first use, the same object after."""
    state = process_pools()
    pool = state.pools.get(name)
    if pool is not None and not pool.closed:
        return pool
    return _create_pool(state, name)


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
    keepalives_idle: float | None = None,
    keepalives_interval: float | None = None,
    keepalives_count: int | None = None,
    tcp_user_timeout: float | None = None,
    connect_kwargs: Mapping[str, Any] | None = None,
    driver: str | None = None,
    prepare: bool | None = None,
    autocommit: bool | None = None,
    isolation_level: str | None = None,
    read_only: bool | None = None,
    deferrable: bool | None = None,
    configure: Callable[[Any], Any] | None = None,
    reset: Callable[[Any], Any] | None = None,
) -> PoolSettings:
    """Register the settings of pool `name` before its first use; returns them validated.

    Unset keywords keep their defaults, which for the default pool come from the
    environment (DATABASE_URL, DB_POOL_*). Raises ConfigError on a bad value,
    or when the pool is already open in this process with other settings.
    ``autocommit`` ... ``deferrable`` are the state every connection is lent in
    (a returned one is put back in it); ``configure(conn)`` runs on each new
    connection, ``reset(conn)`` on each returned one (docs/own-pool-session.md).
    """
    base = build_settings(**settings_from_env()) if name == DEFAULT else PoolSettings()
    settings = build_settings(
        base,
        dsn=dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        max_waiting=max_waiting,
        max_lifetime=max_lifetime,
        max_idle=max_idle,
        check_idle=check_idle,
        leak_timeout=leak_timeout,
        connect_timeout=connect_timeout,
        keepalives_idle=keepalives_idle,
        keepalives_interval=keepalives_interval,
        keepalives_count=keepalives_count,
        tcp_user_timeout=tcp_user_timeout,
        connect_kwargs=connect_kwargs,
        driver=driver,
        prepare=prepare,
        autocommit=autocommit,
        isolation_level=isolation_level,
        read_only=read_only,
        deferrable=deferrable,
        configure=configure,
        reset=reset,
    )
    state = process_pools()
    with state.lock:
        open_pool = state.pools.get(name)
        if open_pool is not None and not open_pool.closed and open_pool.settings != settings:
            raise ConfigError(f"pool {name!r} is already open with other settings; close it before reconfiguring")
        configured()[name] = settings
        if max_size is not None:
            size_sources()[name] = f"configure(max_size={max_size})"
        else:
            size_sources().pop(name, None)
    return settings


def pool_for(dsn: str, **options: Any) -> Pool:
    """The pool for this configuration in this process; the same object for the same configuration."""
    settings = build_settings(dsn=dsn, **options)
    key = manager.config_key(settings)
    state = process_pools()
    with state.lock:
        configured().setdefault(key, settings)
        if options.get("max_size") is not None:
            size_sources().setdefault(key, f"pool_for(max_size={options['max_size']})")
    return get_pool(key)


def open_pools() -> list[Pool]:
    """This process's open named pools, by name."""
    state = process_pools()
    with state.lock:
        return [pool for _, pool in sorted(state.pools.items()) if not pool.closed]


# Setting any of these says "this deployment uses forkpool's default pool".
_SIZE_SETTINGS = ("DB_POOL_SIZE", "DB_POOL_MIN", "DB_POOL_MAX")


def pool_names() -> list[str]:
    """What a worker opens at start: every pool configured with configure() or used before the fork,
    and the default pool when its size is set in the environment (DB_POOL_SIZE / _MIN / _MAX).

    DATABASE_URL alone is not enough: every library reads it, and an app that
    only protects its own SQLAlchemy engine must not get a second pool.
    """
    names = {*configured(), *_used()}
    if any(os.environ.get(name, "").strip() for name in _SIZE_SETTINGS):
        names.add(DEFAULT)
    return sorted(names)


def _used() -> set[str]:
    holder = home()
    if not hasattr(holder, "used_pools"):
        holder.used_pools = set()
    return holder.used_pools


def close_all() -> None:
    """Close every pool, client, per_process instance and protected object of this process (worker exit, masters).

    In a process forked where no hook ran, what it inherited is released first
    (``after_fork_in_child``): only what this process opened is closed.
    """
    notice_fork()
    close_every_instance()
    protection.release_all()
    pid = os.getpid()
    for pool in list(all_pools()):  # pools made with Pool(...) directly too; async ones close in their loop
        if pool.pid == pid and isinstance(pool, Pool):
            pool.close()


def manager_stats() -> dict[str, Any]:
    """Pools open in this process, the limits, and how many pools the limits closed."""
    state = process_pools()
    with state.lock:
        open_count = sum(1 for p in state.pools.values() if not p.closed)
        counts = dict(state.manager_counts)
    return {
        "pools": open_count,
        "max_pools": manager.max_pools(),
        "idle_close_s": manager.idle_close_seconds(),
        **counts,
    }


def _create_pool(state: ProcessPools, name: str) -> Pool:
    with state.lock:
        # Invariant: at most one open Pool per name per process. Threads racing on
        # first use serialise here, and the losers find the winner's pool.
        pool = state.pools.get(name)
        if pool is None or pool.closed:
            settings = settings_for(name)
            manager.make_room(state)
            manager.start_idle_closer(state)
            pool = Pool(settings, name)
            state.pools[name] = pool
            _used().add(name)
            pool.open(wait=False)  # no I/O here: the maintainer thread connects
        return pool


def settings_for(name: str) -> PoolSettings:
    """The settings pool `name` is made with: configured, or for the default pool the environment."""
    settings = configured().get(name)
    if settings is not None:
        return settings
    if name == DEFAULT:
        return build_settings(**settings_from_env())
    raise ConfigError(f"pool {name!r} is not configured: call forkpool.configure({name!r}, dsn=...) first")
