"""A Celery app with an asyncpg pool made and used at import time; PROTECT=1 hands it to forkpool.protect.

The pool lives in one event loop per process (forkpool.per_process): each
task runs there. Unprotected, a child's tasks use the pool the main process
opened in its own loop.
"""

import asyncio
import os

import asyncpg
from celery import Celery
from celery.signals import worker_process_init

import forkpool
from forkpool.celery import wire_celery

app = Celery("aio_pg_tasks", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(
    task_default_queue=os.environ["CELERY_QUEUE"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
QUERY = "SELECT pg_backend_pid() FROM pg_sleep(0.01)"
WAIT = 15 if os.environ.get("PROTECT") == "1" else 5  # protected: a slow shared machine must not fail a task

loop = forkpool.per_process(asyncio.new_event_loop, close=lambda running: running.close(), key="tasks.loop")


async def _make():
    made = asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=2, max_size=2)
    if os.environ.get("PROTECT") == "1":
        forkpool.protect(made)
    await made
    await made.fetchval("SELECT 1")  # work at import: in the main process
    return made


pool = loop().run_until_complete(_make())
if os.environ.get("PROTECT") == "1":
    wire_celery(app)


@worker_process_init.connect
def _open(**_):
    # Connected after wire_celery's receiver: forkpool has set this child up first. The
    # child's loop exists here (per_process): the pool opens in it, as asyncpg opens (min_size).
    if os.environ.get("PROTECT") == "1":
        loop().run_until_complete(asyncio.wait_for(_open_pool(), 3))


async def _open_pool():
    await pool  # asyncpg's open


@app.task
def backend():
    try:
        return [os.getpid(), loop().run_until_complete(asyncio.wait_for(pool.fetchval(QUERY), WAIT))]
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        return [os.getpid(), f"error {type(exc).__name__}"]
