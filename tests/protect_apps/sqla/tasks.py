"""A Celery app with a SQLAlchemy engine made at import time; PROTECT=1 hands it to forkpool."""

import os

from celery import Celery
from sqlalchemy import text

import forkpool
from dialect import backend as session_of_this_process
from dialect import engine
from forkpool.celery import wire_celery

app = Celery("sqla_tasks", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(
    task_default_queue=os.environ["CELERY_QUEUE"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
if os.environ.get("PROTECT") == "1":
    forkpool.protect(engine, eager=True)  # the test counts whole pools per process
    wire_celery(app)

with engine.connect() as conn:  # work at import: in the main process
    conn.execute(text("SELECT 1"))


@app.task
def backend():
    try:
        return [os.getpid(), session_of_this_process()]
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        return [os.getpid(), f"error {type(exc).__name__}"]
