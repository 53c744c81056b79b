"""This process's pools, one per name: ``get_pool``, ``get_async_pool``, ``configure``, ``pool_for``, ``close_all``.

The pools of a process are one ``per_process`` instance (``ProcessPools``):
the threaded pools by name, the asyncio pools by event loop then name, and
what the limits on their number closed. It is created on first use in the
process that uses it; in a forked child the inherited one is detached (no
network I/O, no lock) and the child builds its own on first use. Settings
registered with ``configure()`` are configuration, not connections: they are
process-independent and a child keeps them. (Every pool object alive,
named or not, is ``_base.live_pools()``: what fork must detach.)

Asyncio pools: the same object for every coroutine of a loop; another loop in
the same process (a second ``asyncio.run``) gets its own, since asyncio
connections belong to the loop that made them; a forked child never uses its
parent's. Loops are held weakly, so a finished loop's pools are not kept alive
here. In an ASGI app, open the pools in the lifespan startup of each worker
(``await get_async_pool()``; ``open_async_pools()`` waits until they are full)
and close them at lifespan shutdown (``await close_async_pools()``).

Two limits for processes that reach many databases (``pool_for(dsn, ...)``
returns the same pool for the same configuration and a new one for another),
both off by default:

- ``DB_MAX_POOLS``: at most this many pools per process; making room evicts the
  least recently used *idle* pool (never one with a connection in use or a
  caller waiting); when none is idle, creating another pool fails clearly.
- ``DB_POOL_IDLE_CLOSE``: close pools nobody used for this many seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from . import _process as fork_quiet
from . import _protect as protection
from ._base import live_pools
from ._pool import Pool
from ._pool_async import AsyncPool
from ._process import after_fork_in_child, close_instances, home, install_fork_hooks, notice_fork, per_process  # noqa: F401
from .errors import ConfigError, PoolError
from .settings import PoolSettings, build_settings, env_int, parse_seconds, settings_from_env

logger = logging.getLogger("forkpool.registry")

DEFAULT = "default"


class ProcessPools:
    """The pools of one process: threaded ones by name, asyncio ones by loop and name, and what the limits closed."""

    def __init__(self) -> None:
        # Guards creation and removal of the threaded pools (not their use).
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self.pools: dict[str, Pool] = {}
        # Changed only in the loop's own thread, with no await between a look-up and an insertion.
        self.by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncPool]] = (
            weakref.WeakKeyDictionary()
        )
        self.manager_counts = {"evicted": 0, "closed_idle": 0}  # what the limits closed
        self.idle_closer: IdleCloser | None = None

    def detach_after_fork(self) -> None:
        # In a forked child, with no lock taken (see _process): the pools themselves
        # were detached by _base's at-fork hook; dropping them here is all that is left.
        for pool in list(self.pools.values()):
            pool.detach_after_fork()
        self.pools = {}
        self.by_loop = weakref.WeakKeyDictionary()

    def close(self) -> None:
        # The threaded pools; asyncio ones close in their loop (close_async_pools).
        with self.lock:
            pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            pool.close()

    def make_room(self) -> None:
        """Called with the lock held, before a new pool is created: DB_MAX_POOLS."""
        limit = max_pools()
        if not limit:
            return
        open_pools = {name: p for name, p in self.pools.items() if not p.closed}
        if len(open_pools) < limit:
            return
        idle = sorted((p.last_active, name) for name, p in open_pools.items() if is_idle(p))
        if not idle:
            raise PoolError(f"{MAX_POOLS_ENV}={limit} pools are open in this process and none is idle")
        _, victim = idle[0]
        self._retire(victim, "evicted")

    def close_idle(self, older_than: float) -> None:
        """Close pools unused for `older_than` seconds (none with a connection in use): DB_POOL_IDLE_CLOSE."""
        now = time.monotonic()
        with self.lock:
            stale = [
                name
                for name, p in self.pools.items()
                if not p.closed and now - p.last_active > older_than and is_idle(p)
            ]
            for name in stale:
                self._retire(name, "closed_idle")

    def start_idle_closer(self) -> None:
        """One thread per process, when DB_POOL_IDLE_CLOSE is set (called with the lock held)."""
        if not idle_close_seconds() or self.idle_closer is not None:
            return
        self.idle_closer = IdleCloser(self)
        self.idle_closer.start()

    def _retire(self, name: str, counter: str) -> None:
        pool = self.pools.pop(name)
        self.manager_counts[counter] += 1
        manager_logger.info("%r: %s", pool, counter.replace("_", " "))
        pool.close()


process_pools = per_process(
    ProcessPools, detach=ProcessPools.detach_after_fork, close=ProcessPools.close, key="forkpool.pools"
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
    key = config_key(settings)
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
    close_instances()
    protection.release_all()
    pid = os.getpid()
    for pool in list(live_pools()):  # pools made with Pool(...) directly too; async ones close in their loop
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
        "max_pools": max_pools(),
        "idle_close_s": idle_close_seconds(),
        **counts,
    }


def _create_pool(state: ProcessPools, name: str) -> Pool:
    with state.lock:
        # Invariant: at most one open Pool per name per process. Threads racing on
        # first use serialise here, and the losers find the winner's pool.
        pool = state.pools.get(name)
        if pool is None or pool.closed:
            settings = settings_for(name)
            state.make_room()
            state.start_idle_closer()
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


# -- the limits: DB_MAX_POOLS, DB_POOL_IDLE_CLOSE (see the module docstring) ---------------------------------

manager_logger = logging.getLogger("forkpool.manager")

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
    value = parse_seconds(IDLE_CLOSE_ENV, raw) if raw else 0.0
    return max(value, 0.0)


def config_key(settings: PoolSettings) -> str:
    """``<dsn without password>#<8 hex>``: readable in stats, distinct per configuration."""
    digest = hashlib.blake2b(repr(sorted(vars(settings).items())).encode(), key=_SALT, digest_size=4)
    return f"{settings.identity}#{digest.hexdigest()}"


def is_idle(pool: Any) -> bool:
    snapshot = pool.stats()
    return bool(snapshot["in_use"] == 0 and snapshot["waiting"] == 0)


class IdleCloser:
    """The sweep of DB_POOL_IDLE_CLOSE. Its thread is not alive across a fork (_process.py, "background threads no fork sees")."""

    def __init__(self, state: ProcessPools) -> None:
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
            state.close_idle(interval)


# -- asyncio pools, per process and event loop (see the module docstring) ------------------------------------

OPEN_TIMEOUT = 2.5  # like the server hooks' bound on opening a worker's pools


async def get_async_pool(name: str = DEFAULT) -> AsyncPool:
    """This process's and this loop's pool called `name`: made on first use, the same object after."""
    loop = asyncio.get_running_loop()
    pools = process_pools().by_loop.setdefault(loop, {})
    pool = pools.get(name)
    if pool is None or pool.closed:
        # No await between the look-up and the insertion: one coroutine makes the pool.
        pool = pools[name] = AsyncPool(settings_for(name), name)
        await pool.open(wait=False)
    return pool


async def open_async_pools(timeout: float = OPEN_TIMEOUT) -> bool:
    """At an ASGI worker's start: every pool a worker opens (see registry.pool_names), full within `timeout`."""
    deadline = time.monotonic() + timeout
    full = True
    for name in pool_names():
        pool = await get_async_pool(name)
        full = await pool.open(wait=True, timeout=max(deadline - time.monotonic(), 0.0)) and full
    return full


async def close_async_pools() -> None:
    """At lifespan shutdown: close this loop's pools (their sessions end now, not at TCP timeout)."""
    pools = process_pools().by_loop.pop(asyncio.get_running_loop(), {})
    for pool in pools.values():
        await pool.close()
