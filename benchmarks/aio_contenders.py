"""The asyncio pools under test in aio_bench, each opened and filled to POOL_SIZE in the running loop.

    ours             forkpool.AsyncPool (psycopg 3), min = max = 5, default settings, getconn()/putconn()
    ours_b           a second, identical forkpool.AsyncPool: the A/A control (ours_b / ours is the noise)
    psycopg_pool     psycopg_pool.AsyncConnectionPool, min = max = 5, getconn()/putconn()
    asyncpg          asyncpg.create_pool(min_size=5, max_size=5), acquire()/release(), default settings:
                     release() runs asyncpg's session reset (SELECT pg_advisory_unlock_all(); CLOSE ALL;
                     UNLISTEN *; RESET ALL), one round trip per release
    asyncpg_noreset  diagnostic: the same with reset= a coroutine that does nothing (asyncpg >= 0.30): its
                     pool without that round trip, what a user who opts out of the reset gets
    floor_psycopg    no pool, (b) with 1 task only: one psycopg 3 AsyncConnection, "acquired" and
                     "released" for nothing: what the driver alone costs for the same transaction
    floor_asyncpg    the same with one asyncpg connection

The transaction of scenario (b) sends the same statements to the server on every contender:
BEGIN, SELECT 1, COMMIT, one round trip each (psycopg 3 outside autocommit sends BEGIN on its
own before the first query; asyncpg's ``transaction()`` sends BEGIN and COMMIT as simple queries).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

POOL_SIZE = 5
APP_NAME = "aio_bench"


@dataclass
class AioContender:
    key: str
    family: str  # ours | psycopg_pool | asyncpg
    config: str
    getconn: Callable[[], Awaitable[Any]]
    putconn: Callable[[Any], Awaitable[Any]]
    transaction: Callable[[Any], Awaitable[None]]  # BEGIN; SELECT 1; COMMIT on a checked-out connection
    release_round_trip: bool = False  # release() talks to the server: fewer operations per 1-task pass
    pool: Any = None  # ours: the AsyncPool, for its stats
    only: tuple[str, ...] = ()  # the scenarios it runs in; () for all


async def psycopg_transaction(conn: Any) -> None:
    cur = await conn.execute("SELECT 1")  # not in autocommit: psycopg sends BEGIN first
    await cur.fetchone()
    await conn.commit()  # every contender returns an idle connection: no pool pays a rollback


async def asyncpg_transaction(conn: Any) -> None:
    async with conn.transaction():  # BEGIN ... COMMIT, the statements psycopg sends
        await conn.fetchval("SELECT 1")


async def _no_reset(conn: Any) -> None:
    """asyncpg's reset= hook doing nothing: release() then skips the reset query."""


def _floor(
    key: str, family: str, config: str, conn: Any, transaction: Callable[[Any], Awaitable[None]]
) -> AioContender:
    async def getconn() -> Any:
        return conn

    async def putconn(_: Any) -> None:
        return None

    return AioContender(key, family, config, getconn, putconn, transaction, only=("select1_1task",))


async def build_contenders(dsn: str, stack: AsyncExitStack) -> dict[str, AioContender]:
    """Open every pool (filled to 5) before the first round; closed by `stack`, in this loop."""
    import asyncpg
    import psycopg_pool

    import forkpool
    from forkpool.settings import build_settings

    found: dict[str, AioContender] = {}

    async def ours(key: str, name: str, config: str) -> None:
        settings = build_settings(dsn=dsn, driver="psycopg", min_size=POOL_SIZE, max_size=POOL_SIZE)
        pool = forkpool.AsyncPool(settings, name)
        stack.push_async_callback(pool.close)
        if not await pool.open(wait=True, timeout=30):
            raise RuntimeError(f"{pool!r} did not fill to {POOL_SIZE} in 30 s")
        found[key] = AioContender(key, "ours", config, pool.getconn, pool.putconn, psycopg_transaction, pool=pool)

    await ours(
        "ours", "aio-bench", "forkpool.AsyncPool (psycopg 3), default settings (check_idle 5 s + idle socket poll)"
    )
    await ours("ours_b", "aio-bench-b", "a second forkpool.AsyncPool, identical (A/A control)")

    p3 = psycopg_pool.AsyncConnectionPool(
        dsn,
        min_size=POOL_SIZE,
        max_size=POOL_SIZE,
        open=False,
        name="psycopg_pool",
        kwargs={"application_name": f"{APP_NAME}:psycopg_pool"},
    )
    stack.push_async_callback(p3.close)
    await p3.open(wait=True, timeout=30)
    found["psycopg_pool"] = AioContender(
        "psycopg_pool",
        "psycopg_pool",
        "AsyncConnectionPool(min_size=5, max_size=5)",
        p3.getconn,
        p3.putconn,
        psycopg_transaction,
    )

    async def apg(key: str, config: str, **extra: Any) -> None:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            server_settings={"application_name": f"{APP_NAME}:{key}"},
            **extra,
        )
        stack.push_async_callback(pool.close)
        found[key] = AioContender(
            key,
            "asyncpg",
            config,
            pool.acquire,
            pool.release,
            asyncpg_transaction,
            release_round_trip="reset" not in extra,
        )

    await apg("asyncpg", "create_pool(min_size=5, max_size=5): release() runs the reset query")
    await apg("asyncpg_noreset", "create_pool(..., reset=<no-op>): no reset query (diagnostic)", reset=_no_reset)

    # The drivers alone: the (b) transaction on one bare connection, no pool.
    import psycopg

    bare3 = await psycopg.AsyncConnection.connect(dsn, application_name=f"{APP_NAME}:floor_psycopg")
    stack.push_async_callback(bare3.close)
    found["floor_psycopg"] = _floor(
        "floor_psycopg", "psycopg", "one psycopg.AsyncConnection, no pool (floor)", bare3, psycopg_transaction
    )
    bare_apg = await asyncpg.connect(dsn, server_settings={"application_name": f"{APP_NAME}:floor_asyncpg"})
    stack.push_async_callback(bare_apg.close)
    found["floor_asyncpg"] = _floor(
        "floor_asyncpg", "asyncpg", "one asyncpg connection, no pool (floor)", bare_apg, asyncpg_transaction
    )
    return found
