"""A Celery app with a psycopg_pool pool used at import time (VARIANT sync or asyncio); PROTECT=1 protects it.

The async pool lives in one event loop per process (forkpool.per_process):
the app opens it there at worker_process_init, and each task runs there.
"""

import asyncio
import os

from celery import Celery
from celery.signals import worker_process_init
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import forkpool
from forkpool.celery import wire_celery

app = Celery("pgpool_tasks", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(
    task_default_queue=os.environ["CELERY_QUEUE"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
ASYNC = os.environ.get("VARIANT") == "asyncio"
QUERY = "SELECT pg_backend_pid() FROM pg_sleep(0.01)"

loop = forkpool.per_process(asyncio.new_event_loop, close=lambda running: running.close(), key="tasks.loop")
if ASYNC:
    pool = AsyncConnectionPool(os.environ["DATABASE_URL"], min_size=2, max_size=2, timeout=2, open=False)
else:
    pool = ConnectionPool(os.environ["DATABASE_URL"], min_size=2, max_size=2, timeout=2, open=True)
if os.environ.get("PROTECT") == "1":
    forkpool.protect(pool)
    wire_celery(app)


async def _open_and_query(query):
    await pool.open(wait=True, timeout=10)
    async with pool.connection() as conn:
        return (await (await conn.execute(query)).fetchone())[0]


def query(sql):
    if ASYNC:
        return loop().run_until_complete(asyncio.wait_for(_open_and_query(sql), 5))
    with pool.connection() as conn:
        return conn.execute(sql).fetchone()[0]


query("SELECT 1")  # work at import: in the main process
startup = "not started"


@worker_process_init.connect
def _open(**_):
    # Connected after wire_celery's receiver: forkpool has set this child up first.
    global startup
    if not ASYNC:
        return  # the sync pool: forkpool opened it (protected)
    try:
        loop().run_until_complete(pool.open(wait=True, timeout=3))
        startup = "open"
    except Exception as exc:  # noqa: BLE001 - the child serves on: tasks.first tells
        startup = f"error {type(exc).__name__}"


@app.task
def first():
    return [os.getpid(), startup]


@app.task
def backend():
    try:
        return [os.getpid(), query(QUERY)]
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        return [os.getpid(), f"error {type(exc).__name__}"]
