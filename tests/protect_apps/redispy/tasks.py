"""A Celery app with a redis client made at import time (VARIANT sync or asyncio); PROTECT=1 protects it.

The broker is another Redis (BROKER_URL): the app's client is the only one
talking to REDIS_URL. The asyncio client runs in one event loop per process
(forkpool.per_process), where each task runs and the client's connection lives.
"""

import asyncio
import os

import redis
import redis.asyncio
from celery import Celery
from celery.signals import worker_process_init

import forkpool
from forkpool.celery import wire_celery

app = Celery("redis_tasks", broker=os.environ["BROKER_URL"], backend=os.environ["BROKER_URL"])
app.conf.update(
    task_default_queue=os.environ["CELERY_QUEUE"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
ASYNCIO = os.environ.get("VARIANT") == "asyncio"

loop = forkpool.per_process(asyncio.new_event_loop, close=lambda running: running.close(), key="tasks.loop")
if ASYNCIO:
    client = redis.asyncio.Redis(
        connection_pool=redis.asyncio.BlockingConnectionPool.from_url(
            os.environ["REDIS_URL"], max_connections=1, timeout=5, socket_timeout=5
        )
    )
else:
    client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
if os.environ.get("PROTECT") == "1":
    forkpool.protect(client, eager=True)  # the test counts whole pools per process
    wire_celery(app)


def run(call):
    """Run a client call: as it is (sync), or in this process's event loop (asyncio)."""
    return loop().run_until_complete(asyncio.wait_for(call(), 5)) if ASYNCIO else call()


run(client.ping)  # work at import: in the main process


startup = "not started"  # what this child's first command, at worker_process_init, answered


@worker_process_init.connect
def _open(**_):
    # Connected after wire_celery's receiver: forkpool has set this child up first.
    # The app opens its connection in its own loop (forkpool cannot for asyncio).
    global startup
    if not ASYNCIO:
        return  # the sync client: forkpool opened it (protected), or the first task will
    try:
        startup = str(run(client.client_id))
    except Exception as exc:  # noqa: BLE001 - the child serves on: tasks.first tells
        startup = f"error {type(exc).__name__}"


@app.task
def first():
    return [os.getpid(), startup]


@app.task
def backend():
    try:
        return [os.getpid(), run(client.client_id)]
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        return [os.getpid(), f"error {type(exc).__name__}"]
