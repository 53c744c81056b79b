"""Health and stats of this process's pools: each health check a real round trip, stats a snapshot per pool."""

from __future__ import annotations

from typing import Any

from ._redact import describe_error
from ._registry import manager_stats, open_pools
from .aio_registry import async_health_check, async_stats
from .errors import PoolError

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
