import forkpool
from celery import Celery
from forkpool.celery import wire_celery

app = Celery("tasks")  # broker and result backend from CELERY_BROKER_URL, CELERY_RESULT_BACKEND
wire_celery(app)

@app.task
def backend_pid():
    with forkpool.get_pool().connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]
