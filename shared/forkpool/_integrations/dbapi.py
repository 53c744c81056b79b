"""A bare psycopg2 or psycopg (3) connection, and how any DB-API connection is dropped in a child.

A protected bare connection is the process's own: a forked child's copy is
pointed at /dev/null and left unclosed (psycopg2 >= 2.8 and psycopg 3 skip
PQfinish for a connection made in another process), so any use in the child
fails at once instead of corrupting the parent's session; the child makes its
own connection. Masters close theirs before forking, workers at exit. (A
master's connection is then closed in its workers too: using it there fails
with the driver's "connection already closed" / "the connection is closed".)

A process that needs a connection of its own, in every worker::

    own = forkpool.per_process(lambda: psycopg2.connect(dsn, application_name=forkpool.identity.application_name()),
                               detach=drop_without_io, close=lambda conn: conn.close())

    with own().cursor() as cur: ...   # this process's connection, made on first use

Tried with psycopg2 2.9.13 and psycopg 3.3.9 (``Connection`` and ``AsyncConnection``).
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Any

from .._base import PoolReport
from .._endpoints import Endpoints, postgres
from .._sockets import devnull_fd


def drop_without_io(dbapi_connection: Any) -> None:
    """Point a connection made in another process at /dev/null; never close it (no I/O, no lock).

    ``fileno()`` reads a field in both drivers and takes no lock; ``close()``
    would send Terminate on the parent's socket and, in psycopg2, wait for a
    mutex a parent thread may hold mid-query.
    """
    try:
        fd = dbapi_connection.fileno()
    except Exception:  # noqa: BLE001 - closed already, or no socket: nothing to protect
        return
    if fd is not None and fd >= 0:
        os.dup2(devnull_fd(), fd)


def dsn_of(dbapi_connection: Any) -> str:
    info = getattr(dbapi_connection, "info", None)  # psycopg 3 ConnectionInfo, psycopg2 ConnectionInfo (2.8+)
    if info is not None and hasattr(info, "dsn"):
        return str(info.dsn)
    return str(getattr(dbapi_connection, "dsn", ""))


class BareConnection:
    name = "dbapi"

    def attach(self, obj: Any) -> Endpoints:
        return postgres(dsn_of(obj))

    def detach(self, obj: Any) -> None:
        # Its socket went to /dev/null with the others (this again covers a DSN that hides
        # the server, a service file say): using it in the child now fails cleanly.
        drop_without_io(obj)

    def release(self, obj: Any) -> None:
        if obj.closed:
            return
        pending = obj.close()
        if inspect.isawaitable(pending):  # psycopg's AsyncConnection: from sync hooks, with no loop
            _run_to_end(pending, fallback=obj.pgconn.finish)

    def warm(self, obj: Any, deadline: float, eager: bool) -> bool:
        return time.monotonic() <= deadline

    def report(self, obj: Any) -> list[PoolReport]:
        return [
            PoolReport(
                f"{type(obj).__module__}.{type(obj).__qualname__}",
                "postgresql",
                1,
                "one connection",
                open=0 if obj.closed else 1,
            )
        ]


def _run_to_end(coroutine: Any, fallback: Any) -> None:
    """Finish a coroutine that awaits nothing (a bare ``AsyncConnection.close()``); else close it, run `fallback`."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    fallback()


INTEGRATION = BareConnection()
