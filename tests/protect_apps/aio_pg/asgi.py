"""An ASGI app (Gunicorn's uvicorn worker) with an asyncpg pool or a SQLAlchemy AsyncEngine made at import time.

VARIANT (PROTECT=1 hands the object to forkpool.protect):
- ``pool``: ``await asyncpg.create_pool(...)`` and a query at import, in an
  ``asyncio.run()`` (the master, under preload_app); the lifespan opens it in
  the worker's loop with ``await pool`` (asyncpg's open: a no-op on an open
  pool), and leaves the closing to the server hooks.
- ``lazy``: ``asyncpg.create_pool(...)`` at import, never awaited there (no
  loop yet); the lifespan's first query opens it, its shutdown closes it.
- ``engine``: ``create_async_engine("postgresql+asyncpg://...")`` used at
  import; the lifespan holds its two connections once (warm), its shutdown
  disposes it. ``engine_psycopg``: the same on ``postgresql+psycopg``.
GET / answers "<worker pid> <backend pid>"; GET /startup what the lifespan got.
"""

import asyncio
import os

import asyncpg

import forkpool

VARIANT = os.environ.get("VARIANT", "pool")
PROTECT = os.environ.get("PROTECT") == "1"
URL = os.environ["DATABASE_URL"]
QUERY = "SELECT pg_backend_pid() FROM pg_sleep(0.005)"
# Protected, a request waits for a connection as long as the client waits for it (a slow
# shared machine must not fail the run); unprotected, a hung session fails the request soon.
WAIT = 10 if PROTECT else 2
engine = pool = None

if VARIANT in ("engine", "engine_psycopg"):
    from sqlalchemy import make_url, text
    from sqlalchemy.ext.asyncio import create_async_engine

    driver = "psycopg" if VARIANT == "engine_psycopg" else "asyncpg"
    engine = create_async_engine(
        make_url(URL).set(drivername=f"postgresql+{driver}"), pool_size=2, max_overflow=0, pool_timeout=WAIT
    )
    if PROTECT:
        forkpool.protect(engine)

    async def _query(sql):
        async with engine.connect() as conn:
            return (await conn.execute(text(sql))).scalar_one()

    async def _start():
        async with engine.connect() as one, engine.connect() as two:  # warm: both of its connections
            for conn in (one, two):
                await conn.execute(text("SELECT 1"))

    async def _stop():
        await engine.dispose()

    asyncio.run(_query("SELECT 1"))  # work at import: in the master, under preload_app
elif VARIANT == "pool":

    async def _make():
        made = await asyncpg.create_pool(URL, min_size=2, max_size=2)
        await made.fetchval("SELECT 1")  # work at import: in the master, under preload_app
        return made

    pool = asyncio.run(_make())
    if PROTECT:
        forkpool.protect(pool)

    async def _query(sql):
        return await pool.fetchval(sql)

    async def _start():
        await pool  # asyncpg's open, in this worker's loop

    async def _stop():
        pass  # the server hooks close it (forkpool's worker_exit, protected)
else:
    pool = asyncpg.create_pool(URL, min_size=2, max_size=2)  # no loop yet: never awaited here
    if PROTECT:
        forkpool.protect(pool)

    async def _query(sql):
        return await pool.fetchval(sql)

    async def _start():
        await _query("SELECT 1")  # first use opens it

    async def _stop():
        await pool.close()


startup = "not started"


async def _lifespan_start():
    global startup
    try:
        await asyncio.wait_for(_start(), 2 * WAIT)
        startup = "open"
    except Exception as exc:  # noqa: BLE001 - the worker serves on: /startup tells
        startup = f"error {type(exc).__name__}"


async def _lifespan_stop():
    try:
        await asyncio.wait_for(_stop(), 5)
    except Exception:  # noqa: BLE001 - an unprotected app's pool may be broken: the worker still exits
        pass


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _lifespan_start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _lifespan_stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/startup":
        status, body = 200, f"{os.getpid()} {startup}"
    else:
        try:
            status, body = 200, f"{os.getpid()} {await asyncio.wait_for(_query(QUERY), WAIT + 3)}"
        except Exception as exc:  # noqa: BLE001 - the test counts what users would see
            status, body = 500, f"{os.getpid()} error {type(exc).__name__}"
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body.encode()})
