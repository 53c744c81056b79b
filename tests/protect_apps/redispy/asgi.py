"""An ASGI app (Gunicorn's uvicorn worker) with a redis.asyncio.Redis made at import time; PROTECT=1 protects it.

One connection per worker (a BlockingConnectionPool of 1), opened in the
worker's own loop at lifespan startup: asyncio connections belong to a loop.
GET /startup answers what that first command got. (Unprotected, it fails:
redis-py then reconnects, so later requests no longer show it.)
"""

import asyncio
import os

import redis.asyncio

import forkpool

pool = redis.asyncio.BlockingConnectionPool.from_url(
    os.environ["REDIS_URL"], max_connections=1, timeout=5, socket_timeout=5
)
client = redis.asyncio.Redis(connection_pool=pool)
if os.environ.get("PROTECT") == "1":
    forkpool.protect(client)

asyncio.run(client.ping())  # work at import: in the master, under preload_app
startup = "not started"  # what this worker's first command, at lifespan startup, answered


async def _start():
    global startup
    try:
        startup = str(await asyncio.wait_for(client.client_id(), 5))
    except Exception as exc:  # noqa: BLE001 - the worker serves on: /startup tells
        startup = f"error {type(exc).__name__}"


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
            status, body = 200, f"{os.getpid()} {await asyncio.wait_for(client.client_id(), 5)}"
        except Exception as exc:  # noqa: BLE001 - the test counts what users would see
            status, body = 500, f"{os.getpid()} error {type(exc).__name__}"
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body.encode()})
