"""What the gevent tests ask of a worker: pool waiters, timeouts and upkeep, run inside it (tests/test_gevent.py).

Shared by the Gunicorn app (web.py) and the Celery tasks (tasks.py): each check
runs in the serving process and answers with JSON-able facts, no timing.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import forkpool
from forkpool import _base as keys

HOLD = 0.2  # how long /hold keeps its connection: time.sleep, cooperative once gevent has patched it


def patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("threading") and monkey.is_module_patched("time"))


def query() -> dict:
    with forkpool.get_pool().connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return {"pid": os.getpid(), "backend": cur.fetchone()[0]}


def hold() -> dict:
    """Keep a connection while sleeping: other greenlets run meanwhile, and queue for the pool."""
    with forkpool.get_pool().connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        backend = cur.fetchone()[0]
        time.sleep(HOLD)
    return {"pid": os.getpid(), "backend": backend, "waits": forkpool.get_pool().stats()[keys.WAITS]}


def exhaust() -> dict:
    """Every connection taken: a checkout times out; a queued one is woken by a return.

    The two checkouts run in greenlets where gevent has patched the process, else in threads
    (Celery's threads and solo pools).
    """
    pool = forkpool.get_pool()
    pool.open(wait=True, timeout=10)
    taken = [pool.getconn(timeout=10) for _ in range(pool.settings.max_size)]
    try:
        late = _Run(_checkout, pool, 0.2)
        late.join(10)
        waiter = _Run(_checkout, pool, 20)
        deadline = time.monotonic() + 20
        while pool.stats()[keys.WAITING] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # cooperative once patched: the waiter's greenlet runs meanwhile
        queued = pool.stats()[keys.WAITING]
        pool.putconn(taken.pop())  # wakes the waiter, which returns what it got
        waiter.join(20)
    finally:
        for conn in taken:
            pool.putconn(conn)
    return {"pid": os.getpid(), "timed_out": late.value, "queued": queued, "woken": waiter.value, "patched": patched()}


class _Run:
    """`work(*args)` in a thread, a greenlet once gevent patched threading; its result as .value."""

    def __init__(self, work, *args) -> None:
        self.value = None
        self._thread = threading.Thread(target=self._run, args=(work, args), daemon=True)
        self._thread.start()

    def _run(self, work, args) -> None:
        self.value = work(*args)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _checkout(pool: forkpool.Pool, timeout: float) -> str:
    try:
        conn = pool.getconn(timeout=timeout)
    except forkpool.PoolTimeout:
        return "timeout"
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return "served" if cur.fetchone() == (1,) else "wrong"
    finally:
        conn.rollback()
        pool.putconn(conn)


def refill() -> dict:
    """A connection broken under the pool is replaced by its maintainer, with nobody asking."""
    pool = forkpool.get_pool()
    pool.open(wait=True, timeout=10)
    opened = pool.stats()[keys.CONNECTIONS_OPENED]
    conn = pool.getconn(timeout=10)
    conn.close()  # broken: putconn discards it and wakes the maintainer
    pool.putconn(conn)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        snapshot = pool.stats()
        if snapshot[keys.SIZE] == pool.settings.min_size and snapshot[keys.CONNECTIONS_OPENED] > opened:
            break
        time.sleep(0.01)  # cooperative under gevent: the maintainer (a greenlet there) runs meanwhile
    snapshot = pool.stats()
    return {
        "pid": os.getpid(),
        "size": snapshot[keys.SIZE],
        "min_size": pool.settings.min_size,
        "reopened": snapshot[keys.CONNECTIONS_OPENED] - opened,
        "maintainers": sorted(t.name for t in threading.enumerate() if t.name.startswith("forkpool-")),
    }
