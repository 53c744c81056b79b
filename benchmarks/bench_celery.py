"""The suite benchmark's Celery app: ``celery -A benchmarks.bench_celery worker``.

One task, ``bench.write_row(key)``: INSERT one row into bench_events, committed, through a
connection from ``benchmarks.db_modes`` (BENCH_DB_MODE: pool | connect | floor). Broker and
results: REDIS_URL; queue: BENCH_QUEUE. In pool mode ``forkpool.celery.wire_celery()``
gives each task process its own pool in worker_process_init; receivers connected before and
after it time that hook into BENCH_STARTUP_FILE (Celery calls receivers in connection order).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, signals

from benchmarks.bench_data import EVENT_INSERT, TASK_WRITE_ROW
from benchmarks.db_modes import connection_source, current_mode
from benchmarks.startup_probe import pool_state, record_startup

_mode = current_mode()
_redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench", broker=_redis, backend=_redis)
app.conf.update(
    task_default_queue=os.environ.get("BENCH_QUEUE", "bench"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_started: dict[str, float] = {}


@signals.worker_process_init.connect(weak=False, dispatch_uid="bench.startup.begin")
def _startup_begins(**_: Any) -> None:
    _started["at"] = time.perf_counter()


if _mode == "pool":
    from forkpool.celery import wire_celery

    wire_celery()


@signals.worker_process_init.connect(weak=False, dispatch_uid="bench.startup.end")
def _startup_ends(**_: Any) -> None:
    state = pool_state() if _mode == "pool" else {"pool_size": 0, "pool_min": 0, "full": True}
    record_startup("celery", _mode, _started.get("at", time.perf_counter()), worker_class="prefork", **state)


_connection = connection_source(_mode)


@app.task(name=TASK_WRITE_ROW)
def write_row(key: str) -> int:
    with _connection() as conn, conn.cursor() as cur:
        cur.execute(EVENT_INSERT, (key, os.getpid()))
    return os.getpid()
