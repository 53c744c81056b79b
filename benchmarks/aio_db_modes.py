"""Three ways for the ASGI bench app to get a connection (psycopg 3, asyncio), one calling code.

    async with (await source.lend()) as conn:          # committed on success
        cur = await conn.execute(...)

    pool     this project's asyncio pool: ``(await forkpool.get_async_pool()).connection()``,
             opened in the worker's lifespan startup (``open_async_pools``: full before the
             worker serves), closed at its shutdown; a pool of DB_POOL_SIZE (the benchmark: 1)
    connect  ``psycopg.AsyncConnection.connect()`` + ``close()`` around every request
    floor    one bare ``psycopg.AsyncConnection`` per worker, opened in the lifespan startup,
             no pool: the requests of a worker take turns on it, serialised by an
             ``asyncio.Lock`` (FIFO, like the pool's waiters); a broken connection is replaced
             on the next request

Each mode is one coroutine call and one async context manager per request, so none pays
for an extra layer. The mode comes from BENCH_DB_MODE (benchmarks.db_modes), the server
from DATABASE_URL; connections are named ``<FORKPOOL_NAME>:<mode>:<pid>`` (the pool: forkpool's
own ``<FORKPOOL_NAME>:asgi:<pid>``). Only the pool mode imports forkpool; every mode imports
psycopg with the app, so that no start-up figure includes that import.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import psycopg  # every mode runs on it: imported with the app, before the lifespan's timed start-up

from .db_modes import MODES, current_mode


class AsyncSource:
    """Opened in the lifespan startup, closed at its shutdown; `lend()` per request."""

    mode = ""

    async def open(self) -> dict[str, Any]:
        """Connections this worker holds once open: {"pool_size", "pool_min", "full"} (start-up records)."""
        return {"pool_size": 0, "pool_min": 0, "full": True}

    async def close(self) -> None:
        return None

    async def lend(self) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError


def _application_name(mode: str) -> str:
    return f"{os.environ.get('FORKPOOL_NAME') or 'bench'}:{mode}:{os.getpid()}"[-63:]


async def _connect(mode: str) -> Any:
    return await psycopg.AsyncConnection.connect(
        os.environ.get("DATABASE_URL", ""), application_name=_application_name(mode)
    )


class PoolSource(AsyncSource):
    mode = "pool"

    async def open(self) -> dict[str, Any]:
        import forkpool
        from forkpool._registry import OPEN_TIMEOUT

        self._get_async_pool = forkpool.get_async_pool  # what an app calls per request
        await forkpool.get_async_pool()
        full = await forkpool.open_async_pools(OPEN_TIMEOUT)
        stats = (await forkpool.get_async_pool()).stats()
        return {"pool_size": stats["size"], "pool_min": stats["min_size"], "full": full}

    async def close(self) -> None:
        import forkpool

        await forkpool.close_async_pools()

    async def lend(self) -> AbstractAsyncContextManager[Any]:
        return (await self._get_async_pool()).connection()


class ConnectSource(AsyncSource):
    mode = "connect"

    async def lend(self) -> AbstractAsyncContextManager[Any]:
        return self._connect_per_use()

    @asynccontextmanager
    async def _connect_per_use(self) -> AsyncIterator[Any]:
        conn = await _connect(self.mode)
        try:
            yield conn
            await conn.commit()
        finally:
            await conn.close()  # after an error, closing rolls back on the server


class FloorSource(AsyncSource):
    """One connection per worker; its requests wait their turn on an asyncio.Lock."""

    mode = "floor"

    def __init__(self) -> None:
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def open(self) -> dict[str, Any]:
        self._conn = await _connect(self.mode)
        return {"pool_size": 1, "pool_min": 1, "full": True}

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def lend(self) -> AbstractAsyncContextManager[Any]:
        return self._turn()

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[Any]:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await _connect(self.mode)
            conn = self._conn
            try:
                yield conn
            except BaseException:
                try:
                    await conn.rollback()
                except Exception:  # noqa: BLE001 - replaced on the next request
                    self._conn = None
                raise
            await conn.commit()


SOURCES: dict[str, type[AsyncSource]] = {"pool": PoolSource, "connect": ConnectSource, "floor": FloorSource}
assert set(SOURCES) == set(MODES)


def async_source(mode: str | None = None) -> AsyncSource:
    return SOURCES[mode or current_mode()]()
