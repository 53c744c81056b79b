"""The django stack's settings, all from the environment the suite's other processes read.

DATABASE_URL       the suite's database, on Django's native pool of STACK_POOL_SIZE connections (min = max)
REDIS_URL          forkpool.redis.get_redis() (job ids) and, unless CELERY_BROKER_URL / CELERY_RESULT_BACKEND
                   say otherwise, Celery's broker and results (suite/queue.py)
CELERY_QUEUE, WORKER_CONCURRENCY, WORKER_MAX_TASKS_PER_CHILD, CELERY_VISIBILITY_TIMEOUT, WEB_MAX_BODY_BYTES
                   as for the suite's Flask app and workers (README, Configuration)

``"forkpool.django"`` protects every PostgreSQL alias: one pool per worker
process, none in a master, closed when the process exits.
"""

from __future__ import annotations

import os
import secrets

from forkpool.settings import env_int
from suite.queue import broker_url, queue_name, result_backend
from suite.stacks import pool_size
from web.api import DEFAULT_MAX_BODY_BYTES

from .database import database_from_url

# Nothing is signed (no sessions, no CSRF, no admin, no messages): a random key per
# process keeps a fixed one out of the repository and costs nothing.
SECRET_KEY = secrets.token_urlsafe(50)
DEBUG = False
# As the Flask app: any Host is answered; nothing here builds an absolute URL from it (Locations are relative).
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django_stack",  # its tasks module, found by Celery's autodiscover_tasks()
    "forkpool.django",
]
# No session, CSRF or auth middleware: a JSON API for machines, as the Flask app is.
MIDDLEWARE = ["django_stack.errors.JsonErrors"]
ROOT_URLCONF = "django_stack.urls"
WSGI_APPLICATION = "django_stack.wsgi.application"
# Gunicorn's logconfig_dict and the worker's setup_logging receiver configure logging, as for the
# suite's other processes; Django's own configuration would add a second set of handlers.
LOGGING_CONFIG = None

DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL", ""), pool_size())}

# Larger bodies get 413 (Django raises RequestDataTooBig on reading request.body).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("WEB_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1)

# Celery (namespace "CELERY", celery.py): the suite's workers' settings (workers/celeryconfig.py).
CELERY_BROKER_URL = broker_url()
CELERY_RESULT_BACKEND = result_backend()
CELERY_TASK_DEFAULT_QUEUE = queue_name()
CELERY_WORKER_POOL = "prefork"
CELERY_WORKER_CONCURRENCY = env_int("WORKER_CONCURRENCY", 2, minimum=1)
CELERY_WORKER_MAX_TASKS_PER_CHILD = env_int("WORKER_MAX_TASKS_PER_CHILD", 0) or None
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's consumer without its second close of a broken Redis connection (why: suite/celery_consumer.py).
CELERY_WORKER_CONSUMER = "suite.celery_consumer:Consumer"
# Acknowledged after the task ran, redelivered if its process dies: the tasks are idempotent.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_SERIALIZER = CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 24 * 3600
CELERY_TASK_TRACK_STARTED = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=1)}
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = 5
