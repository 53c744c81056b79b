"""The suite's tasks. Each uses this process's pool; each is safe to run twice (acks_late)."""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg2
import psycopg2.errors
from celery.utils.log import get_task_logger
from psycopg2.extras import Json

from forkpool import ConnectError, PoolTimeout
from forkpool.identity import process_role
from suite.jobs import AggregateArgs, HoldArgs, InvalidTaskArguments, RecordEventArgs
from suite.jobs import parse_task_args as _parse
from suite.queue import TASK_AGGREGATE, TASK_HOLD, TASK_POOL_STATS, TASK_RECORD_EVENT, TASK_RETRY
from suite.stacks import make_worker_engine, stack_errors, worker_store

from .app import app

make_worker_engine()  # the flask-sqlalchemy stack: an engine made at import, as users do

logger = get_task_logger(__name__)

# Worth retrying: the database or the pool may be back in a moment. A write refused by a server turned
# read-only (SQLSTATE 25006, a failover: these tasks never open a read-only transaction) wrote nothing, and
# the pool has dropped that connection: the retry connects to the new primary.
TRANSIENT = (
    psycopg2.OperationalError,
    psycopg2.errors.ReadOnlySqlTransaction,
    ConnectError,
    PoolTimeout,
    *stack_errors()[0],
    *stack_errors()[1],
)
RETRY = {
    "autoretry_for": TRANSIENT,
    # A statement timeout is an OperationalError too, but running the same query again times out again.
    "dont_autoretry_for": (psycopg2.errors.QueryCanceled,),
    **TASK_RETRY,
}


@app.task(name=TASK_RECORD_EVENT, throws=(InvalidTaskArguments,), **RETRY)
def record_event(**kwargs: Any) -> dict[str, Any]:
    """Write the event row once per key: a redelivered task finds its row and writes nothing."""
    args = _parse(RecordEventArgs, kwargs)
    with worker_store().connection() as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO events (key, data, written_by) "
            "VALUES (%s, %s, current_setting('application_name')) "
            "ON CONFLICT (key) DO NOTHING RETURNING written_by",
            (args.key, None if args.data is None else Json(args.data)),
        )
        row = cur.fetchone()
    return {"key": args.key, "created": row is not None, "pid": os.getpid()}


@app.task(name=TASK_AGGREGATE, throws=(InvalidTaskArguments,), **RETRY)
def aggregate(**kwargs: Any) -> dict[str, Any]:
    _parse(AggregateArgs, kwargs)
    with worker_store().connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(payload), coalesce(max(id), 0), (SELECT count(*) FROM events) FROM items")
        items, with_payload, last_id, events = cur.fetchone()
    return {"items": items, "items_with_payload": with_payload, "last_item_id": last_id, "events": events}


@app.task(name=TASK_HOLD, throws=(InvalidTaskArguments,), **RETRY)
def hold(**kwargs: Any) -> dict[str, Any]:
    """Keep one connection busy on the server for a while: pool pressure for load tests."""
    args = _parse(HoldArgs, kwargs)
    with worker_store().connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid() FROM pg_sleep(%s)", (args.seconds,))
        backend = cur.fetchone()[0]
    return {"held_seconds": args.seconds, "pid": os.getpid(), "backend_pid": backend}


@app.task(name=TASK_POOL_STATS)
def pool_stats(linger: float = 0.0) -> dict[str, Any]:
    """This task process's pid, role and pool stats, for comparing with what the server sees.

    `linger` (at most 2 s, no connection held) keeps the process busy so that
    concurrent calls spread over every process of the worker.
    """
    time.sleep(min(max(float(linger), 0.0), 2.0))
    return {"pid": os.getpid(), "role": process_role(), "pool": worker_store().stats()}
