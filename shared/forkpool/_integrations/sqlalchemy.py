"""SQLAlchemy engines (any dialect, any DB-API driver), and Flask-SQLAlchemy's ``db``: one pool per process.

- ``do_connect``: a new DB-API connection carries this process's identity
  (``<suite>:<role>:<pid>``) where its driver has a place for one and the app
  set none: PostgreSQL's ``application_name`` (psycopg2, psycopg 3, pg8000;
  asyncpg's ``server_settings``), MySQL / MariaDB's ``program_name`` connection
  attribute (PyMySQL). Nothing for SQLite, mysqlclient (no connection
  attributes in its API, 2.2 and 2.3) or a driver not listed here.
- ``connect``: each new DB-API connection's far end (``getpeername`` on its
  socket, a question to the kernel) is remembered on the engine, beside what
  the URL names: a forked child finds every inherited socket to those servers,
  with no DNS lookup, even for a server the URL hides (``connect_args``).
  Nothing is added to the checkout path.
- In a forked child: those sockets go to /dev/null, then
  ``engine.dispose(close=False)`` (SQLAlchemy >= 1.4.33) gives the engine a new
  pool without touching the old one. The old pool is kept referenced for the
  child's life: its connections are never closed or collected there (a
  driver's close, mysqlclient's ``mysql_close`` say, writes on the socket;
  sqlite3's takes the connection's mutex, which a parent thread may have held
  at fork).
- SQLite: a file database is a file handle per connection and no server
  session; SQLite's docs forbid carrying a connection across fork. A child
  leaves the inherited handles alone (above) and opens its own. An in-memory
  database *is* its connection: it is left as it is, and each child works on
  its private copy of the parent's database as it was at fork.
- A master disposes properly (it owns the connections); a worker opens what
  SQLAlchemy would (nothing until first use), or with ``eager`` ``pool_size``
  connections at start, and disposes at exit.

Flask-SQLAlchemy keeps one engine per app and bind in ``db._app_engines``:
private, read because ``db.engines`` needs an app context that server hooks
do not have. An engine it makes after ``protect(db)`` (``init_app`` in an app
factory) is attached as it is made, through ``db._make_engine`` (private too:
Flask-SQLAlchemy has no public hook for a new engine; tried with 3.1.1).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from .._base import PoolReport
from .._endpoints import Endpoints, mysql, postgres
from .._failover import sqlalchemy_handle_error
from .._process import home, noticed_late
from .._sockets import detach_connected_to, own_peer
from ..identity import application_name

_ATTACHED = "_forkpool_attached"
_ENDPOINTS = "_forkpool_endpoints"  # what the URL names, resolved in the process that attached
_LEARNED = "_forkpool_peers"  # far ends of the connections this engine made: (ip, port) or a Unix path
_WRAPPED = "_forkpool_wraps"

# Where each driver takes this process's identity (dialect.driver -> connect keyword).
_IDENTITY_KEYWORD = {
    "psycopg2": "application_name",
    "psycopg2cffi": "application_name",
    "psycopg": "application_name",  # its async dialect too (driver "psycopg")
    "pg8000": "application_name",
    "asyncpg": "server_settings",  # a dict of run-time parameters: application_name inside it
    "pymysql": "program_name",  # sent as the program_name connection attribute
    # Not aiomysql: older releases take no program_name (a TypeError on every connect), and none was tried.
}
_LIBPQ_DRIVERS = {"psycopg2", "psycopg2cffi", "psycopg"}  # read PGAPPNAME themselves
# Names this library put in: SQLAlchemy 1.4 hands every do_connect the same dict, so a name
# already there may be ours from an earlier connect (the parent's, in a child) and is replaced.
_OURS: set[str] = set()


def engines_of(obj: Any) -> Iterator[Any]:
    """The engines behind `obj`: itself, or every engine of a Flask-SQLAlchemy ``db``."""
    app_engines = getattr(obj, "_app_engines", None)
    if app_engines is None:
        yield obj
        return
    for by_bind in list(app_engines.values()):
        yield from by_bind.values()


def identity_keyword(dialect: Any) -> str | None:
    """The connect keyword that carries this process's identity for `dialect`'s driver, or None."""
    return _IDENTITY_KEYWORD.get(getattr(dialect, "driver", ""))


def add_identity(dialect: Any, cparams: dict[str, Any]) -> None:
    """Put this process's identity into a connect call's keywords, where the driver takes one and none is set."""
    keyword = identity_keyword(dialect)
    if keyword is None:
        return
    name = application_name()
    if keyword == "server_settings":
        settings = dict(cparams.get(keyword) or {})  # a copy: the app's dict is shared by every connect
        if settings.get("application_name") in (None, *_OURS):
            settings["application_name"] = name
            _OURS.add(name)
            cparams[keyword] = settings
        return
    if keyword == "application_name" and dialect.driver in _LIBPQ_DRIVERS and os.environ.get("PGAPPNAME"):
        return  # the app named itself through libpq's environment
    if cparams.get(keyword) in (None, *_OURS):
        cparams[keyword] = name
        _OURS.add(name)


def in_memory(engine: Any) -> bool:
    """An SQLite database that lives in its connection (``sqlite://``, ``:memory:``, ``mode=memory``)."""
    if engine.dialect.name != "sqlite":
        return False
    database = engine.url.database or ""
    return (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or "mode=memory" in database
        or engine.url.query.get("mode") == "memory"
    )


def url_endpoints(engine: Any) -> Endpoints:
    """The servers `engine`'s URL names (a DNS lookup: never in a forked child); none for SQLite."""
    url = engine.url
    try:
        if engine.dialect.name == "postgresql":
            return postgres(url.set(drivername="postgresql").render_as_string(hide_password=False))
        if engine.dialect.name in ("mysql", "mariadb"):
            unix_socket = url.query.get("unix_socket")
            return mysql(url.host, url.port, unix_socket if isinstance(unix_socket, str) else None)
    except Exception:  # noqa: BLE001 - a URL only the driver understands: the connections' own peers still count
        return Endpoints()
    return Endpoints()


def peer_of(dbapi_connection: Any) -> tuple[str, int] | str | None:
    """Where a DB-API connection's socket leads, asked of the kernel; None for no socket (SQLite) or unknown."""
    # PyMySQL keeps its socket in _sock (1.1, 1.2) and has no fileno(); psycopg2, psycopg 3
    # and mysqlclient have fileno(). pg8000 has neither (its URL's endpoints count).
    sock = getattr(dbapi_connection, "_sock", None)
    try:
        if isinstance(sock, socket.socket):
            fd = sock.fileno()
        elif callable(getattr(dbapi_connection, "fileno", None)):
            fd = dbapi_connection.fileno()
        else:
            return None
        if not isinstance(fd, int) or fd < 0 or socket.getdefaulttimeout() is not None:
            # With a default timeout set, own_peer would change it for a moment, process-wide: in a
            # parent with threads, not worth it. The URL's endpoints remain.
            return None
        return own_peer(fd)
    except Exception:  # noqa: BLE001 - learning is best effort: connecting must never fail for it
        return None


def endpoints_of(engine: Any) -> Endpoints:
    """What `engine` connects to: its URL's servers and every far end its connections had. No DNS."""
    found: Endpoints = getattr(engine, _ENDPOINTS, None) or Endpoints()
    peers = list(getattr(engine, _LEARNED, ()))
    tcp = frozenset(p for p in peers if isinstance(p, tuple))
    unix = frozenset(p for p in peers if isinstance(p, str))
    return found | Endpoints(tcp, unix)


def attach_engine(engine: Any) -> Endpoints:
    """Hook `engine`'s events once; its URL's servers (resolved now, in the attaching process)."""
    from sqlalchemy import event

    if not getattr(engine, _ATTACHED, False):
        learned: set[tuple[str, int] | str] = set()
        setattr(engine, _LEARNED, learned)

        @event.listens_for(engine, "do_connect")
        def _identity(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
            add_identity(dialect, cparams)

        # A write refused by a demoted primary invalidates the pool: it follows the primary (_failover.py).
        event.listen(engine, "handle_error", sqlalchemy_handle_error)

        @event.listens_for(engine, "connect")
        def _learn(dbapi_connection: Any, conn_rec: Any) -> None:
            peer = peer_of(dbapi_connection)
            if peer is not None:
                learned.add(peer)

        setattr(engine, _ENDPOINTS, url_endpoints(engine))
        setattr(engine, _ATTACHED, True)
    return endpoints_of(engine)


def watch_new_engines(db: Any) -> None:
    """Attach every engine Flask-SQLAlchemy makes for `db` from now on, as it is made (``init_app``)."""
    make = getattr(db, "_make_engine", None)
    if make is None or getattr(make, _WRAPPED, False):
        return

    def _make_engine(*args: Any, **kwargs: Any) -> Any:
        engine = make(*args, **kwargs)
        attach_engine(engine)
        return engine

    setattr(_make_engine, _WRAPPED, True)
    db._make_engine = _make_engine  # an instance attribute: init_app's self._make_engine finds it first


def _kept() -> list[Any]:
    """Pools a forked child inherited: referenced for its life, so nothing of theirs is closed or collected."""
    holder = home()
    if not hasattr(holder, "sqlalchemy_inherited_pools"):
        holder.sqlalchemy_inherited_pools = []
    return holder.sqlalchemy_inherited_pools


class SQLAlchemyEngines:
    name = "sqlalchemy"

    def attach(self, obj: Any) -> Endpoints:
        found = Endpoints()
        if hasattr(obj, "_app_engines"):
            watch_new_engines(obj)
        for engine in engines_of(obj):
            found |= attach_engine(engine)
        return found

    def detach(self, obj: Any) -> None:
        engines = [e for e in engines_of(obj) if not in_memory(e)]  # a child's in-memory database is its own copy
        inherited = Endpoints()
        for engine in engines:
            inherited |= endpoints_of(engine)
        # Again, with what the engines learned since protect() (engines made after it, servers only
        # connect_args named): no DNS, no I/O, no lock.
        detach_connected_to(inherited, only_shared_with_parent=noticed_late())
        for engine in engines:
            _kept().append(engine.pool)
            engine.dispose(close=False)  # a new pool; the old one is not touched

    def release(self, obj: Any) -> None:
        for engine in engines_of(obj):
            if not in_memory(engine):  # disposing an in-memory database would drop its data
                engine.dispose()

    def warm(self, obj: Any, deadline: float, eager: bool) -> bool:
        done = True
        for engine in engines_of(obj):
            attach_engine(engine)  # an engine Flask-SQLAlchemy made since protect()
            if not eager or in_memory(engine):
                continue  # SQLAlchemy's pool connects on first use: so does the worker's
            size_of = getattr(engine.pool, "size", None)  # QueuePool's method; SingletonThreadPool's is an int
            size = size_of() if callable(size_of) else 0
            held = []
            try:
                for _ in range(size):
                    if time.monotonic() > deadline:
                        done = False
                        break
                    held.append(engine.raw_connection())
            finally:
                for conn in held:
                    conn.close()  # back to the pool
        return done

    def report(self, obj: Any) -> list[PoolReport]:
        return [engine_report(engine) for engine in engines_of(obj)]


def engine_report(engine: Any) -> PoolReport:
    """An engine's pool: QueuePool's maximum is pool_size + max_overflow (max_overflow -1: no bound)."""
    pool = engine.pool
    label = f"engine {engine.url.render_as_string(hide_password=True)}"
    backend = engine.dialect.name
    size, overflow = getattr(pool, "size", None), getattr(pool, "_max_overflow", None)
    if callable(size) and isinstance(overflow, int):  # QueuePool and its async twin
        # _max_overflow: QueuePool keeps the max_overflow argument nowhere public (SQLAlchemy 2.0, 2.1).
        bound = None if overflow < 0 else size() + overflow
        source = f"pool_size {size()} + max_overflow {overflow}"
        return PoolReport(
            label, backend, bound, source, open=pool.checkedin() + pool.checkedout(), in_use=pool.checkedout()
        )
    kind = type(pool).__name__
    if kind in ("SingletonThreadPool", "StaticPool", "AssertionPool"):
        return PoolReport(label, backend, 1 if kind != "SingletonThreadPool" else None, kind)
    return PoolReport(label, backend, None, kind)  # NullPool: one per checkout, no bound


INTEGRATION = SQLAlchemyEngines()
