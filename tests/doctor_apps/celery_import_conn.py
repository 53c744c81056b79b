"""A Celery app whose task module connects to PostgreSQL at import time, in the main process."""

import os

import psycopg2
from celery import Celery

app = Celery("import_conn", broker=os.environ["REDIS_URL"])
app.conf.update(task_default_queue=os.environ["CELERY_QUEUE"], broker_connection_retry_on_startup=True)

conn = psycopg2.connect(os.environ["DATABASE_URL"], application_name=os.environ.get("APP_NAME", "celery-import"))


@app.task
def now():
    with conn.cursor() as cur:
        cur.execute("SELECT now()")
        return str(cur.fetchone()[0])
