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
``"forkpool.django"`` (an app for ``INSTALLED_APPS``); asyncio: ``await get_async_pool()``, ``get_async_redis()``,
opened in an ASGI lifespan. See docs/fork-story.md for why.

Modules, bottom-up (each imports only modules on lines above its own;
tests/test_layers.py keeps it so):

    _failover, endpoints, errors, identity, per_process, redact, stats
    drivers, extras, fork_quiet, kernel_sockets
    integrations, live_pools, metrics_dir, redis_client, settings
    aio_redis, connections, manager, protection
    maintenance, upkeep, waiter
    aio_upkeep, pool
    aio_pool, registry
    aio_registry, budget, health, metrics
    doctor, flask, lifecycle
    celery, cli, gunicorn, rq, uwsgi
    django
"""

from __future__ import annotations

from . import stats
from .aio_pool import AsyncPool
from .aio_redis import close_async_redis, get_async_redis
from .aio_registry import async_health_check, async_stats, close_async_pools, get_async_pool, open_async_pools
from .errors import (
    ConfigError,
    ConnectError,
    ForkpoolError,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyWaiting,
)
from .extras import MissingExtra
from .health import health_check
from .identity import application_name, process_role, set_identity, set_process_role, suite_id
from .per_process import PerProcess, after_fork_in_child, per_process
from .pool import Pool
from .protection import protect
from .redis_client import get_redis
from .registry import (
    all_stats,
    close_all,
    configure,
    get_pool,
    manager_stats,
    pool_for,
)
from .settings import PoolSettings

__version__ = "0.2.0"

__all__ = [
    "AsyncPool",
    "ConfigError",
    "ConnectError",
    "ForkpoolError",
    "MissingExtra",
    "PerProcess",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolSettings",
    "PoolTimeout",
    "TooManyWaiting",
    "after_fork_in_child",
    "all_stats",
    "application_name",
    "async_health_check",
    "async_stats",
    "close_all",
    "close_async_pools",
    "close_async_redis",
    "configure",
    "get_async_pool",
    "get_async_redis",
    "get_pool",
    "get_redis",
    "health_check",
    "manager_stats",
    "open_async_pools",
    "per_process",
    "pool_for",
    "process_role",
    "protect",
    "set_identity",
    "set_process_role",
    "stats",
    "suite_id",
]
