"""forkpool: fork-safe, thread-safe per-process PostgreSQL pools and singletons for pre-forking servers.

    from forkpool import get_pool

    with get_pool().connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")

``get_pool()`` is this process's pool: the same object on every call in the
process, a new one in a forked child, whose inherited connections are let go
without network I/O. ``per_process`` gives any client the same guarantees.
Server wiring: ``forkpool.gunicorn`` (hooks), ``forkpool.celery`` (signals),
``forkpool.uwsgi`` (``--import forkpool.uwsgi``), ``forkpool.rq`` (a worker class),
``forkpool.flask`` (extension),
``"forkpool.django"`` (an app for ``INSTALLED_APPS``); asyncio: ``await get_async_pool()``,
opened in an ASGI lifespan. Submodules: ``forkpool.identity`` (how sessions are
named), ``forkpool.redis`` (this process's Redis clients), ``forkpool.health``
(health checks and stats), ``forkpool.fork`` (for code that forks outside
Python's hooks), ``forkpool.stats`` (the keys of ``Pool.stats()``). See
docs/fork-story.md for why.

Modules, bottom-up (each imports only modules on lines above its own; import-linter
checks it: [tool.importlinter] in the root pyproject.toml):

    _conninfo
    _failover, _process, errors, identity, stats
    _drivers
    _endpoints
    _metrics_dir, _sockets, fork
    redis, settings
    _base
    _drivers_async
    _integrations, _pool, _pool_async
    _protect
    _registry
    budget, health, metrics
    _servers, doctor, flask
    celery, cli, gunicorn, rq, uwsgi
    django
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

# The public submodules, loaded with the package: `import forkpool` is enough for `forkpool.health.stats()`.
from . import fork as fork
from . import health as health
from . import identity as identity
from . import redis as redis
from . import stats as stats
from ._pool import Pool
from ._pool_async import AsyncPool
from ._process import per_process
from ._protect import protect
from ._registry import close_all, close_async_pools, configure, get_async_pool, get_pool, open_async_pools, pool_for
from .errors import (
    ConfigError,
    ConnectError,
    ForkpoolError,
    MissingExtra,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyWaiting,
)
from .settings import PoolSettings

__version__ = "0.2.0"

__all__ = [
    "AsyncPool",
    "ConfigError",
    "ConnectError",
    "ForkpoolError",
    "MissingExtra",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolSettings",
    "PoolTimeout",
    "TooManyWaiting",
    "close_all",
    "close_async_pools",
    "configure",
    "get_async_pool",
    "get_pool",
    "open_async_pools",
    "per_process",
    "pool_for",
    "protect",
]

# Names this package exported before 0.3.0: {old name: (module, its name there)}. They keep working until
# 0.4; the first use of each in a process warns (DeprecationWarning) with the new place.
_MOVED: dict[str, tuple[str, str]] = {
    "get_redis": ("forkpool.redis", "get_redis"),
    "get_async_redis": ("forkpool.redis", "get_async_redis"),
    "close_async_redis": ("forkpool.redis", "close_async_redis"),
    "health_check": ("forkpool.health", "health_check"),
    "async_health_check": ("forkpool.health", "async_health_check"),
    "all_stats": ("forkpool.health", "stats"),
    "async_stats": ("forkpool.health", "async_stats"),
    "manager_stats": ("forkpool.health", "manager_stats"),
    "suite_id": ("forkpool.identity", "name"),
    "application_name": ("forkpool.identity", "application_name"),
    "process_role": ("forkpool.identity", "process_role"),
    "set_identity": ("forkpool.identity", "set_identity"),
    "set_process_role": ("forkpool.identity", "set_process_role"),
    "PerProcess": ("forkpool.fork", "PerProcess"),
    "after_fork_in_child": ("forkpool.fork", "after_fork_in_child"),
}


# Old names already announced in this process: each is announced once (``from forkpool import x`` looks a
# name up twice, and a caller in a loop should not flood the log).
_announced: set[str] = set()


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _MOVED[name]
    except KeyError:
        raise AttributeError(f"module 'forkpool' has no attribute {name!r}") from None
    if name not in _announced:
        _announced.add(name)
        warnings.warn(
            f"forkpool.{name} is deprecated and will be removed in forkpool 0.4: use {module}.{attribute}",
            DeprecationWarning,
            stacklevel=2,
        )
    return getattr(importlib.import_module(module), attribute)
