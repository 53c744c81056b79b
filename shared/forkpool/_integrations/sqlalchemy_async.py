"""SQLAlchemy's ``AsyncEngine`` (``postgresql+asyncpg``, ``postgresql+psycopg``): its sync engine's pool, per process.

An ``AsyncEngine`` wraps a sync ``Engine`` (``async_engine.sync_engine``)
whose pool (``AsyncAdaptedQueuePool``) holds driver connections that belong
to the event loop that opened them (asyncpg's do; psycopg's use whichever
loop runs them).

- ``do_connect``: each new connection carries this process's identity,
  unless the app set one: ``server_settings={"application_name": ...}`` for
  asyncpg, ``application_name`` for psycopg. ``connect`` / ``close``: the
  engine's driver connections are tracked (weakly), to be dropped or ended
  without a loop.
- In a forked child, after its inherited sockets went to /dev/null, each
  tracked connection's socket is pointed at /dev/null again and
  ``sync_engine.dispose(close=False)`` replaces the pool without touching
  the old one. The old pool is kept, never used: collected in the child, an
  asyncpg connection whose loop is open would ``terminate()`` through that
  loop, whose epoll instance the child shares with its parent.
- A worker opens nothing at start (no loop yet): SQLAlchemy connects on
  first use, in the worker's loop.
- A master (and a worker at exit) ends the sessions properly:
  ``await async_engine.dispose()`` in the connections' own loop when it is
  alive and idle (or runs in another thread). When that loop is gone (an
  ``asyncio.run()`` at import, a uvicorn worker's loop at ``worker_exit``):
  asyncpg connections get Terminate on their socket
  (``integrations.asyncpg.terminate_without_loop``), psycopg connections
  ``pgconn.finish()`` (libpq's Terminate, then close); then
  ``dispose(close=False)``, the old pool kept aside.

``report()`` is ``integrations.sqlalchemy.engine_report`` on the sync engine.
Private attributes: an asyncpg connection's ``_loop`` (the loop it lives in),
and what ``integrations.asyncpg`` names. Tried with SQLAlchemy 2.1.9, asyncpg
0.30 - 0.32, psycopg 3.3.9.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from .._base import PoolReport
from .._endpoints import Endpoints, postgres, resolve
from .asyncpg import drop_without_io as drop_asyncpg
from .asyncpg import loop_state, terminate_without_loop
from .dbapi import drop_without_io as drop_dbapi
from .sqlalchemy import add_identity, engine_report

CLOSE_TIMEOUT_S = 10.0
_ATTACHED = "_forkpool_async_attached"
_TRACKED = "_forkpool_connections"  # weakref.WeakSet of the engine's driver connections, on the sync engine
# Old pools a process keeps but never uses (see the module docstring).
_graveyard: list[Any] = []


def engine_endpoints(engine: Any) -> Endpoints:
    """Where a sync engine's PostgreSQL dialect connects, as the dialect itself reads its URL."""
    if engine.dialect.name != "postgresql":
        return Endpoints()
    _args, params = engine.dialect.create_connect_args(engine.url)
    hosts, ports = params.get("host"), params.get("port")
    hosts = list(hosts) if isinstance(hosts, (list, tuple)) else (str(hosts).split(",") if hosts else [])
    ports = list(ports) if isinstance(ports, (list, tuple)) else (str(ports).split(",") if ports else [])
    if not hosts:
        return postgres(f"port={ports[0]}" if ports else "")  # libpq's default socket directories
    tcp: set[tuple[str, int]] = set()
    unix: set[str] = set()
    for number, host in enumerate(hosts):
        port = int(ports[min(number, len(ports) - 1)] or 5432) if ports else 5432
        if str(host).startswith("/"):
            unix.add(f"{host}/.s.PGSQL.{port}")
        else:
            tcp |= resolve(str(host), port)
    return Endpoints(frozenset(tcp), frozenset(unix))


def _driver(engine: Any) -> str:
    return str(getattr(engine.dialect, "driver", ""))


def attach_async_engine(engine: Any) -> None:
    """The identity and tracking listeners on a sync engine, once."""
    if getattr(engine, _ATTACHED, False):
        return
    from sqlalchemy import event

    tracked: weakref.WeakSet[Any] = weakref.WeakSet()

    @event.listens_for(engine, "do_connect")
    def _identity(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        add_identity(dialect, cparams)  # the sync engines' rules: where the driver takes one, none set

    @event.listens_for(engine, "connect")
    def _track(dbapi_connection: Any, record: Any) -> None:
        tracked.add(_driver_connection(dbapi_connection))

    @event.listens_for(engine, "close")
    def _untrack(dbapi_connection: Any, record: Any) -> None:
        tracked.discard(_driver_connection(dbapi_connection))

    setattr(engine, _TRACKED, tracked)
    setattr(engine, _ATTACHED, True)


def _driver_connection(dbapi_connection: Any) -> Any:
    return getattr(dbapi_connection, "driver_connection", dbapi_connection)


def connections(engine: Any) -> list[Any]:
    return list(getattr(engine, _TRACKED, ()))


def _is_asyncpg(conn: Any) -> bool:
    return type(conn).__module__.startswith("asyncpg")


def _closed(conn: Any) -> bool:
    return bool(conn.is_closed()) if _is_asyncpg(conn) else bool(getattr(conn, "closed", True))


def _abandon_pool(engine: Any) -> None:
    _graveyard.append(engine.pool)  # never collected here: see the module docstring
    engine.dispose(close=False)


class AsyncEngines:
    name = "sqlalchemy_async"

    def attach(self, obj: Any) -> Endpoints:
        engine = obj.sync_engine
        endpoints = engine_endpoints(engine)  # what can fail, first
        attach_async_engine(engine)
        return endpoints

    def detach(self, obj: Any) -> None:
        engine = obj.sync_engine
        for conn in connections(engine):
            (drop_asyncpg if _is_asyncpg(conn) else drop_dbapi)(conn)
        _abandon_pool(engine)

    def release(self, obj: Any) -> None:
        engine = obj.sync_engine
        live = [conn for conn in connections(engine) if not _closed(conn)]
        if not live:
            return
        loops = {conn._loop for conn in live if _is_asyncpg(conn)}
        where = loop_state(loops.pop()) if len(loops) == 1 else "gone"
        if where == "idle":
            loop = next(conn._loop for conn in live if _is_asyncpg(conn))
            loop.run_until_complete(asyncio.wait_for(obj.dispose(), CLOSE_TIMEOUT_S))
            return
        if where == "elsewhere":
            loop = next(conn._loop for conn in live if _is_asyncpg(conn))
            done = asyncio.run_coroutine_threadsafe(asyncio.wait_for(obj.dispose(), CLOSE_TIMEOUT_S), loop)
            done.result(timeout=CLOSE_TIMEOUT_S + 5)
            return
        for conn in live:  # the loop is gone: end each session on its socket, no coroutine
            if _is_asyncpg(conn):
                terminate_without_loop(conn)
            else:
                conn.pgconn.finish()
        _abandon_pool(engine)

    def warm(self, obj: Any, deadline: float, eager: bool) -> bool:
        # No event loop exists yet in a new worker: SQLAlchemy connects on first use, in the worker's loop.
        attach_async_engine(obj.sync_engine)
        return True

    def report(self, obj: Any) -> list[PoolReport]:
        return [engine_report(obj.sync_engine)]


INTEGRATION = AsyncEngines()
