"""A Celery app whose only pool is a protected SQLAlchemy engine (sizes from ENGINE_*), wired to forkpool."""

import os

from celery import Celery
from sqlalchemy import create_engine

import forkpool
from forkpool.celery import wire_celery

app = Celery("budget_tasks", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
engine = create_engine(
    os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg2://", 1),
    pool_size=int(os.environ["ENGINE_POOL_SIZE"]),
    max_overflow=int(os.environ.get("ENGINE_MAX_OVERFLOW", "0")),
)
forkpool.protect(engine)
wire_celery(app)
