"""The ASGI app factory: Starlette, served by Gunicorn's uvicorn workers (web/gunicorn_asgi.conf.py).

Why Starlette and not FastAPI: docs/architecture.md ("The async tier").

Each worker's pools live in its event loop, so they are opened in the ASGI
lifespan's startup, in that loop, after the fork: nothing is opened when the
app is built (possibly in the master, with ``preload_app``), and everything is
closed at lifespan shutdown (SIGTERM, ``max_requests``), so a worker's sessions
end when it stops, not at TCP timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from starlette.applications import Starlette

import forkpool
import forkpool.identity
import forkpool.redis
from forkpool._registry import OPEN_TIMEOUT
from forkpool.gunicorn import ASGI_ROLE
from forkpool.identity import DEFAULT_ROLE
from forkpool.settings import env_int

from .api import DEFAULT_MAX_BODY_BYTES
from .asgi_errors import exception_handlers
from .asgi_views import routes

logger = logging.getLogger("forkpool.web")

# Threads for what has no asyncio API (Celery's producer, its result backend): a
# few are enough, since each call is a short publish or read; more only queue.
BLOCKING_THREADS = 4


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """One worker's start and stop, in its own event loop."""
    if forkpool.identity.process_role() == DEFAULT_ROLE:
        forkpool.identity.set_process_role(
            ASGI_ROLE
        )  # served without forkpool's hooks (bare uvicorn): still named asgi
    # Made here, in the worker: a master never starts threads that a fork would leave behind.
    app.state.executor = ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix="forkpool-blocking")
    await forkpool.get_async_pool()  # the app's pool, opened even if nothing configured its size
    if not await forkpool.open_async_pools(OPEN_TIMEOUT):
        logger.warning("pools not full after %.1f s; they keep connecting in the background", OPEN_TIMEOUT)
    try:
        yield
    finally:
        await forkpool.close_async_pools()
        await forkpool.redis.close_async_redis()
        executor: ThreadPoolExecutor = app.state.executor
        await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)  # waited for off the loop


def create_asgi_app(max_body_bytes: int | None = None) -> Starlette:
    """Build the app. No connection is opened here: each worker opens its own pools at lifespan startup."""
    app = Starlette(routes=routes(), exception_handlers=exception_handlers(), lifespan=lifespan)
    app.state.max_body_bytes = max_body_bytes or env_int("WEB_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1)
    return app
