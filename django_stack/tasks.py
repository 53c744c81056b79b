"""The suite's tasks (workers/tasks.py: the same names, arguments and results) on Django's connection.

Each task runs on this task process's connection, checked out of its native
pool and given back at the task's end (forkpool.django's task boundary); each
is safe to run twice (acks_late): record_event writes its row once per key.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg.errors
from celery import shared_task
from django.db import InterfaceError, OperationalError, connection
from psycopg.types.json import Jsonb

from forkpool.identity import process_role
from suite.jobs import AggregateArgs, HoldArgs, InvalidTaskArguments, RecordEventArgs, parse_task_args
from suite.queue import TASK_AGGREGATE, TASK_HOLD, TASK_POOL_STATS, TASK_RECORD_EVENT, TASK_RETRY

from .database import pool_stats as _pool_stats

# Worth retrying: the database or the pool (PoolTimeout, wrapped by Django) may be back in a moment.
RETRY = {
    "autoretry_for": (OperationalError, InterfaceError),
    **TASK_RETRY,
}


@contextmanager
def cursor() -> Iterator[Any]:
    """This process's connection's cursor; a statement timeout is not retried (running it again times out again).

    Django raises it as its OperationalError, which is retried: it is raised here as
    psycopg's QueryCanceled instead, as workers/tasks.py leaves psycopg2's alone.
    """
    try:
        with connection.cursor() as cur:
            yield cur
    except OperationalError as exc:
        if isinstance(exc.__cause__, psycopg.errors.QueryCanceled):
            raise exc.__cause__ from None
        raise


@shared_task(name=TASK_RECORD_EVENT, throws=(InvalidTaskArguments,), **RETRY)
def record_event(**kwargs: Any) -> dict[str, Any]:
    """Write the event row once per key: a redelivered task finds its row and writes nothing."""
    args = parse_task_args(RecordEventArgs, kwargs)
    with cursor() as cur:  # autocommit: committed when the statement returns
        cur.execute(
            "INSERT INTO events (key, data, written_by) "
            "VALUES (%s, %s, current_setting('application_name')) "
            "ON CONFLICT (key) DO NOTHING RETURNING written_by",
            (args.key, None if args.data is None else Jsonb(args.data)),
        )
        row = cur.fetchone()
    return {"key": args.key, "created": row is not None, "pid": os.getpid()}


@shared_task(name=TASK_AGGREGATE, throws=(InvalidTaskArguments,), **RETRY)
def aggregate(**kwargs: Any) -> dict[str, Any]:
    parse_task_args(AggregateArgs, kwargs)
    with cursor() as cur:
        cur.execute("SELECT count(*), count(payload), coalesce(max(id), 0), (SELECT count(*) FROM events) FROM items")
        items, with_payload, last_id, events = cur.fetchone()
    return {"items": items, "items_with_payload": with_payload, "last_item_id": last_id, "events": events}


@shared_task(name=TASK_HOLD, throws=(InvalidTaskArguments,), **RETRY)
def hold(**kwargs: Any) -> dict[str, Any]:
    """Keep one connection busy on the server for a while: pool pressure for load tests."""
    args = parse_task_args(HoldArgs, kwargs)
    with cursor() as cur:
        cur.execute("SELECT pg_backend_pid() FROM pg_sleep(%s)", (args.seconds,))
        backend = cur.fetchone()[0]
    return {"held_seconds": args.seconds, "pid": os.getpid(), "backend_pid": backend}


@shared_task(name=TASK_POOL_STATS)
def pool_stats(linger: float = 0.0) -> dict[str, Any]:
    """This task process's pid, role and pool stats, for comparing with what the server sees.

    `linger` (at most 2 s, no connection held) keeps the process busy so that
    concurrent calls spread over every process of the worker.
    """
    time.sleep(min(max(float(linger), 0.0), 2.0))
    return {"pid": os.getpid(), "role": process_role(), "pool": _pool_stats()}
