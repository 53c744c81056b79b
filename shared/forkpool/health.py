"""Health of this process's pools and Redis client, each checked with a real round trip."""

from __future__ import annotations

from typing import Any

from .errors import PoolError
from .redact import describe_error
from .registry import open_pools


def health_check(timeout: float = 2.0) -> dict[str, dict[str, Any]]:
    """``{pool name: {"ok": bool, "error": str | None}}`` for every open pool of this process."""
    return {pool.name: _check(pool, timeout) for pool in open_pools()}


def _check(pool: Any, timeout: float) -> dict[str, Any]:
    try:
        with pool.connection(timeout=timeout) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        return {"ok": True, "error": None}
    except (PoolError, pool.driver.Error) as exc:
        return {"ok": False, "error": pool.settings.redact(describe_error(exc))}
