"""Task names and the per-process Celery producer that web processes enqueue with.

The web never imports the workers' code: it sends tasks by name through a
producer-only Celery app built here from the same environment the workers
read (``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND``, else ``REDIS_URL``).
Kombu cleans its connections up only after ``multiprocessing`` forks, so the
producer is per process, like the pools: a child never reuses its parent's.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery

from forkpool.redis import network_options, redis_url

TASK_RECORD_EVENT = "workers.record_event"
TASK_AGGREGATE = "workers.aggregate"
TASK_HOLD = "workers.hold"
TASK_POOL_STATS = "workers.pool_stats"

# How every task of the suite (both stacks) retries a transient database error: Celery's autoretry
# options. Waits of 1, 2, 4, 8, 10 and 10 s, so a task outlives an outage of RETRY_BUDGET_S.
# No jitter: Celery's is full jitter (each wait drawn from 0 to n s), under which six retries can all
# land within a few seconds and give a task up during a short outage (3 % of the draws spend under 8 s,
# once seen in the pg-down-at-start scenario's 6 s outage). Tasks that failed together retry together,
# but each through its process's pool, which bounds the connections and jitters its reconnects.
# (Celery takes retry_backoff as int(max(1, value)): 1 is the shortest first wait it allows.)
TASK_RETRY: dict[str, Any] = {"retry_backoff": 1, "retry_backoff_max": 10, "retry_jitter": False, "max_retries": 6}
RETRY_BUDGET_S = 35

_producer: tuple[int, Celery] | None = None
_producer_lock = threading.Lock()


DEFAULT_QUEUE = "forkpool"


def queue_name() -> str:
    """The queue tasks go to; one per suite lets several runs share one Redis."""
    return os.environ.get("CELERY_QUEUE") or DEFAULT_QUEUE


def broker_url() -> str:
    return os.environ.get("CELERY_BROKER_URL") or redis_url()


def result_backend() -> str:
    return os.environ.get("CELERY_RESULT_BACKEND") or redis_url()


def get_celery() -> Celery:
    """This process's producer app (no tasks, no worker): send_task() and AsyncResult only."""
    global _producer
    pid = os.getpid()
    if _producer is not None and _producer[0] == pid:
        return _producer[1]
    with _producer_lock:
        # Invariant: one producer per process; a forked child never reuses its parent's.
        if _producer is not None and _producer[0] == pid:
            return _producer[1]
        app = Celery("forkpool-producer", broker=broker_url(), backend=result_backend(), set_as_current=False)
        app.conf.update(
            task_default_queue=queue_name(),
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=True,
            # A silent broker fails a publish within the client's bounds instead of hanging a request.
            broker_transport_options={**network_options(), "socket_connect_timeout": 2},
            redis_socket_connect_timeout=2,
            redis_socket_timeout=network_options()["socket_timeout"],
            redis_socket_keepalive=True,
        )
        _producer = (pid, app)
        return app
