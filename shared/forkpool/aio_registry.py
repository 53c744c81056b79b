"""``await get_async_pool(name)``: the pool of this process and this event loop.

The same object for every coroutine of a loop; another loop in the same process
(a second ``asyncio.run``) gets its own, since asyncio connections belong to
the loop that made them; a forked child never uses its parent's. Built on
``per_process``: the per-process instance is a mapping from loop to pools, held
weakly so a finished loop's pools are not kept alive by the registry.

In an ASGI app, open the pools in the lifespan startup of each worker
(``await get_async_pool()``; ``open_async_pools()`` waits until they are full)
and close them at lifespan shutdown (``await close_async_pools()``).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

from ._pool_async import AsyncPool
from ._process import per_process
from ._redact import describe_error
from ._registry import DEFAULT, pool_names, settings_for
from .errors import PoolError

OPEN_TIMEOUT = 2.5  # like the server hooks' bound on opening a worker's pools


class LoopPools:
    """This process's async pools, by event loop then name."""

    def __init__(self) -> None:
        self.by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncPool]] = (
            weakref.WeakKeyDictionary()
        )


_loop_pools = per_process(LoopPools, key="forkpool.async_pools")


async def get_async_pool(name: str = DEFAULT) -> AsyncPool:
    """This process's and this loop's pool called `name`: made on first use, the same object after."""
    loop = asyncio.get_running_loop()
    pools = _loop_pools().by_loop.setdefault(loop, {})
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
    pools = _loop_pools().by_loop.pop(asyncio.get_running_loop(), {})
    for pool in pools.values():
        await pool.close()


def async_stats() -> list[dict[str, Any]]:
    """Stats of this loop's open pools (call from the loop)."""
    pools = _loop_pools().by_loop.get(asyncio.get_running_loop(), {})
    return [pool.stats() for _, pool in sorted(pools.items()) if not pool.closed]


async def async_health_check(timeout: float = 2.0) -> dict[str, dict[str, Any]]:
    """``{pool name: {"ok": bool, "error": str | None}}`` for this loop's open pools, each a real round trip."""
    pools = _loop_pools().by_loop.get(asyncio.get_running_loop(), {})
    return {name: await _check(pool, timeout) for name, pool in sorted(pools.items()) if not pool.closed}


async def _check(pool: AsyncPool, timeout: float) -> dict[str, Any]:
    import psycopg  # there is a pool: psycopg 3 is installed

    try:
        # The whole round trip is bounded: a server that accepts but never answers is not ready either.
        async with asyncio.timeout(timeout), pool.connection(timeout=timeout) as conn:
            await conn.execute("SELECT 1")
        return {"ok": True, "error": None}
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {timeout:g} s"}
    except (PoolError, psycopg.Error) as exc:
        return {"ok": False, "error": pool.settings.redact(describe_error(exc))}
