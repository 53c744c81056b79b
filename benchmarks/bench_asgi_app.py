"""The suite benchmark's ASGI app: bench_app.py's endpoint on asyncio, the same code in every mode.

    GET /item     a random row of bench_items by primary key, as JSON (one SELECT, committed)
    GET /healthz  no I/O

A bare ASGI callable, no framework (as bench_app.py is a bare WSGI one), so that Starlette's
cost does not dilute the difference between the ways of getting a connection
(``benchmarks.aio_db_modes``, mode from BENCH_DB_MODE). Each worker opens its connections in
the lifespan startup, in its own event loop, and records how long that took
(benchmarks.startup_probe); it closes them at lifespan shutdown. Served by
``gunicorn -c benchmarks/gunicorn_bench_asgi.conf.py`` (uvicorn_worker.UvicornWorker).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .aio_db_modes import async_source
from .bench_data import ITEM_QUERY, ITEM_ROWS
from .startup_probe import record_startup

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_source = async_source()  # in the worker: imported after fork (no preload); opens nothing here
_HEADERS = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        path = scope["path"]
        if path == "/item":
            status, body = await _item()
        elif path == "/healthz":
            status, body = 200, b'{"status": "ok"}'
        else:
            status, body = 404, b'{"error": "not found"}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*_HEADERS, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)


async def _item() -> tuple[int, bytes]:
    item_id = random.randint(1, ITEM_ROWS)
    try:
        async with await _source.lend() as conn:
            cur = await conn.execute(ITEM_QUERY, (item_id,))
            row = await cur.fetchone()
    except Exception as exc:  # noqa: BLE001 - counted by the load generator as a non-2xx
        return 500, json.dumps({"error": type(exc).__name__}).encode()
    if row is None:
        return 404, b'{"error": "no such item"}'
    return 200, json.dumps({"id": row[0], "name": row[1], "score": row[2]}).encode()


async def _lifespan(receive: Receive, send: Send) -> None:
    await receive()  # lifespan.startup
    started = time.perf_counter()
    try:
        state = await _source.open()
    except Exception as exc:  # noqa: BLE001 - the worker exits, Gunicorn says why
        await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
        return
    record_startup("gunicorn-asgi", _source.mode, started, worker_class="asgi", **state)
    await send({"type": "lifespan.startup.complete"})
    await receive()  # lifespan.shutdown
    await _source.close()
    await send({"type": "lifespan.shutdown.complete"})
