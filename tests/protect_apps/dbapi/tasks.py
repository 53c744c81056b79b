"""A Celery app: tasks.backend queries through the connection made at import time, tasks.own through the child's own."""

import os

from celery import Celery

from forkpool.celery import wire_celery
from shared_conn import backend as query
from shared_conn import conn, own

app = Celery("dbapi_tasks", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(
    task_default_queue=os.environ["CELERY_QUEUE"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
if os.environ.get("PROTECT") == "1":
    wire_celery(app)


def _answer(target):
    try:
        return [os.getpid(), query(target())]
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        return [os.getpid(), f"error {type(exc).__name__}"]


@app.task
def backend():
    return _answer(lambda: conn)


@app.task(name="tasks.own")
def own_backend():
    return _answer(own)
