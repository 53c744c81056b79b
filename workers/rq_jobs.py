"""The suite's tasks as RQ jobs (``rq worker --worker-class forkpool.rq.Worker``): each runs in its own work-horse.

The same work as workers/tasks.py, on forkpool's pool: a horse opens its own
pool on first use (the at-fork hook released what it inherited) and
``forkpool.rq.Worker`` closes it once the job is done. Each job is safe to run
twice (RQ enqueues a job again when its horse is killed: suite/rq_queue.py).
"""

from __future__ import annotations

import os
import time
from typing import Any

from psycopg2.extras import Json

import forkpool
from forkpool import process_role
from suite.jobs import AggregateArgs, HoldArgs, RecordEventArgs
from suite.jobs import parse_task_args as _parse

# A horse lives for one job: its pool opens in it, so the stats job waits (bounded) for it to fill.
POOL_OPEN_TIMEOUT_S = 10.0


def record_event(**kwargs: Any) -> dict[str, Any]:
    """Write the event row once per key: a job run again finds its row and writes nothing."""
    args = _parse(RecordEventArgs, kwargs)
    with forkpool.get_pool().connection() as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO events (key, data, written_by) "
            "VALUES (%s, %s, current_setting('application_name')) "
            "ON CONFLICT (key) DO NOTHING RETURNING written_by",
            (args.key, None if args.data is None else Json(args.data)),
        )
        row = cur.fetchone()
    return {"key": args.key, "created": row is not None, "pid": os.getpid()}


def aggregate(**kwargs: Any) -> dict[str, Any]:
    _parse(AggregateArgs, kwargs)
    with forkpool.get_pool().connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(payload), coalesce(max(id), 0), (SELECT count(*) FROM events) FROM items")
        items, with_payload, last_id, events = cur.fetchone()
    return {"items": items, "items_with_payload": with_payload, "last_item_id": last_id, "events": events}


def hold(**kwargs: Any) -> dict[str, Any]:
    args = _parse(HoldArgs, kwargs)
    with forkpool.get_pool().connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid() FROM pg_sleep(%s)", (args.seconds,))
        backend = cur.fetchone()[0]
    return {"held_seconds": args.seconds, "pid": os.getpid(), "backend_pid": backend}


def pool_stats(linger: float = 0.0) -> dict[str, Any]:
    """This horse's pid, role and pool stats, with the server's count of its sessions at the same moment.

    The horse is gone by the time anyone could ask the server about its pid, so
    the job asks (through its own pool): ``server_sessions`` is how many sessions the
    server sees under this process's name.
    """
    time.sleep(min(max(float(linger), 0.0), 2.0))
    pool = forkpool.get_pool()
    pool.wait(POOL_OPEN_TIMEOUT_S)
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = current_setting('application_name')"
        )
        server = cur.fetchone()[0]
    return {"pid": os.getpid(), "role": process_role(), "pool": {**pool.stats(), "server_sessions": server}}
