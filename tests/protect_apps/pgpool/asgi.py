"""An ASGI app (Gunicorn's uvicorn worker) with a psycopg_pool AsyncConnectionPool used at import time.

PROTECT=1 hands it to forkpool.protect. The app opens the pool at import (in
the master, under preload_app) and at lifespan startup (in each worker's own
loop: an async pool lives in a loop, which forkpool cannot open for it).
GET /startup answers what the startup open got.
"""

import asyncio
import os

from psycopg_pool import AsyncConnectionPool

import forkpool

pool = AsyncConnectionPool(os.environ["DATABASE_URL"], min_size=2, max_size=2, timeout=2, open=False)
if os.environ.get("PROTECT") == "1":
    forkpool.protect(pool)


async def _work_at_import():
    await pool.open(wait=True, timeout=10)
    async with pool.connection() as conn:
        await conn.execute("SELECT 1")


asyncio.run(_work_at_import())  # in the master, under preload_app
startup = "not started"


async def _start():
    global startup
    try:
        await pool.open(wait=True, timeout=5)  # a no-op when the pool is (or looks) open already
        startup = "open"
    except Exception as exc:  # noqa: BLE001 - the worker serves on: /startup tells
        startup = f"error {type(exc).__name__}"


async def _backend():
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT pg_backend_pid() FROM pg_sleep(0.005)")
        return (await cur.fetchone())[0]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/startup":
        status, body = 200, f"{os.getpid()} {startup}"
    else:
        try:
            status, body = 200, f"{os.getpid()} {await asyncio.wait_for(_backend(), 5)}"
        except Exception as exc:  # noqa: BLE001 - the test counts what users would see
            status, body = 500, f"{os.getpid()} error {type(exc).__name__}"
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body.encode()})
