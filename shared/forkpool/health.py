"""Health and stats of this process's pools: each health check a real round trip, stats a snapshot per pool."""

from __future__ import annotations

import asyncio
from typing import Any

from ._pool_async import AsyncPool
from ._registry import manager_stats, open_pools, process_pools
from .errors import PoolError
from .settings import describe_error

__all__ = ["async_health_check", "async_stats", "health_check", "manager_stats", "stats"]


def health_check(timeout: float = 2.0) -> dict[str, dict[str, Any]]:
    """``{pool name: {"ok": bool, "error": str | None}}`` for every open pool of this process."""
    return {pool.name: _check(pool, timeout) for pool in open_pools()}


def stats() -> list[dict[str, Any]]:
    """`Pool.stats()` of every pool this process has open, by name."""
    return [pool.stats() for pool in open_pools()]


def _check(pool: Any, timeout: float) -> dict[str, Any]:
    try:
        with pool.connection(timeout=timeout) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        return {"ok": True, "error": None}
    except (PoolError, pool.driver.Error) as exc:
        return {"ok": False, "error": pool.settings.redact(describe_error(exc))}


def async_stats() -> list[dict[str, Any]]:
    """Stats of this loop's open pools (call from the loop)."""
    pools = process_pools().by_loop.get(asyncio.get_running_loop(), {})
    return [pool.stats() for _, pool in sorted(pools.items()) if not pool.closed]


async def async_health_check(timeout: float = 2.0) -> dict[str, dict[str, Any]]:
    """``{pool name: {"ok": bool, "error": str | None}}`` for this loop's open pools, each a real round trip."""
    pools = process_pools().by_loop.get(asyncio.get_running_loop(), {})
    return {name: await _check_async(pool, timeout) for name, pool in sorted(pools.items()) if not pool.closed}


async def _check_async(pool: AsyncPool, timeout: float) -> dict[str, Any]:
    errors = pool._driver.Error  # psycopg 3's or asyncpg's
    try:
        # The whole round trip is bounded: a server that accepts but never answers is not ready either.
        async with asyncio.timeout(timeout), pool.connection(timeout=timeout) as conn:
            await conn.execute("SELECT 1")
        return {"ok": True, "error": None}
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {timeout:g} s"}
    except PoolError as exc:
        return {"ok": False, "error": pool.settings.redact(describe_error(exc))}
    except errors as exc:
        return {"ok": False, "error": pool.settings.redact(describe_error(exc))}
