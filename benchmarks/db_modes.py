"""Three ways for the bench app and the bench tasks to get a connection, one calling code.

    with connection() as conn, conn.cursor() as cur: ...   # committed on success

    pool     this project's per-process pool: ``forkpool.get_pool().connection()``
    connect  ``psycopg2.connect()`` + ``close()`` around every use
    floor    one bare psycopg2 connection per thread of the process, opened lazily on first
             use after fork, pid-checked, no pool (sync workers and Celery processes have one
             thread: one connection per process; gthread: one per thread)

The mode comes from BENCH_DB_MODE; the server from DATABASE_URL. Connections of connect
and floor are named like the pool's (``<FORKPOOL_NAME>:<mode>:<pid>``), so pg_stat_activity
tells every variant apart. Only the pool mode imports ``shared``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

MODE_ENV = "BENCH_DB_MODE"
MODES = ("pool", "connect", "floor")

ConnectionSource = Callable[[], AbstractContextManager[Any]]


def current_mode() -> str:
    mode = os.environ.get(MODE_ENV, "pool")
    if mode not in MODES:
        raise SystemExit(f"benchmarks: {MODE_ENV}={mode!r} is not one of {', '.join(MODES)}")
    return mode


def connection_source(mode: str) -> ConnectionSource:
    """A callable returning a context manager that lends one connection."""
    if mode == "pool":
        from forkpool import get_pool

        return lambda: get_pool().connection()
    if mode == "connect":
        return _connect_per_use
    return _PerThreadConnection().lend


def _application_name(mode: str) -> str:
    return f"{os.environ.get('FORKPOOL_NAME') or 'bench'}:{mode}:{os.getpid()}"[-63:]


def _connect() -> Any:
    import psycopg2

    return psycopg2.connect(os.environ.get("DATABASE_URL", ""), application_name=_application_name(current_mode()))


@contextmanager
def _connect_per_use() -> Iterator[Any]:
    conn = _connect()
    try:
        yield conn
        conn.commit()
    finally:
        conn.close()  # after an error, closing rolls back on the server


class _PerThreadConnection:
    """The floor: a connection per thread, kept for the life of the process."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _get(self) -> Any:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid() or conn.closed:
            # An inherited connection (pid differs) belongs to the parent: never used, never closed here.
            conn = _connect()
            local.conn, local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def lend(self) -> Iterator[Any]:
        conn = self._get()
        try:
            yield conn
        except BaseException:
            try:
                conn.rollback()
            except Exception:  # noqa: BLE001 - a broken connection is replaced on next use
                self._local.conn = None
            raise
        conn.commit()
