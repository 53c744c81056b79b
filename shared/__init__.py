"""forkpool's shared library: one PostgreSQL pool and one Redis client per process, fork-safe.

    from shared import get_pool

    with get_pool().connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")

See docs/fork-story.md for why every process must own its pool, and
``shared.gunicorn_hooks`` / ``shared.celery_signals`` for the server wiring.
"""

from . import stats
from .errors import (
    ConfigError,
    ConnectError,
    ForkpoolError,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyWaiting,
)
from .health import health_check
from .manager import manager_stats, pool_for
from .identity import application_name, process_role, set_identity, set_process_role, suite_id
from .pool import Pool
from .redis_client import get_redis
from .registry import after_fork_in_child, all_stats, close_all, configure, get_pool
from .settings import PoolSettings

__all__ = [
    "ConfigError",
    "ConnectError",
    "ForkpoolError",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolSettings",
    "PoolTimeout",
    "TooManyWaiting",
    "after_fork_in_child",
    "all_stats",
    "application_name",
    "close_all",
    "configure",
    "get_pool",
    "get_redis",
    "manager_stats",
    "pool_for",
    "health_check",
    "process_role",
    "set_identity",
    "set_process_role",
    "stats",
    "suite_id",
]
